"""convert_dpl: rows of the DPL release joined with item metadata into our user rows."""

from __future__ import annotations

import json

import pytest

from dataset_formats.build import BuildError
from dataset_formats.build.cli import main as nextquill_data
from nextquill_common.jsonl import read_jsonl, write_jsonl


def review(asin: str, timestamp: int, text: str) -> dict:
    return {"asin": asin, "rating": 4.0, "title": f"t-{asin}", "text": text, "timestamp": timestamp}


@pytest.fixture()
def dpl_files(tmp_path):
    meta = write_jsonl(
        tmp_path / "meta.jsonl",
        [
            {"asin": "A", "title": "Book A", "description": ["first part", "second part"]},
            {"asin": "B", "title": "Book B", "description": []},
        ],
    )
    rows = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {
                "user_id": "U1",
                "profile": [review("B", 20, "newer"), review("A", 10, "older")],
                "data": review("A", 30, "the target"),
            }
        ],
    )
    return rows, meta


def test_dpl_rows_become_user_rows_with_history_oldest_first(tmp_path, dpl_files, capsys):
    rows, meta = dpl_files
    out = tmp_path / "out" / "train.jsonl"
    nextquill_data(["convert-dpl", "--rows", str(rows), "--meta", str(meta), "--out", str(out)])
    assert "wrote 1 rows" in capsys.readouterr().out
    (row,) = read_jsonl(out)
    assert row["user_id"] == "U1"
    assert row["target"] == {
        "item_id": "A",
        "item_title": "Book A",
        "item_description": "first part second part",
        "rating": 4.0,
        "title": "t-A",
        "text": "the target",
        "timestamp": 30,
    }
    assert [(h["item_id"], h["text"], h["item_title"]) for h in row["history"]] == [
        ("A", "older", "Book A"),
        ("B", "newer", "Book B"),
    ]
    assert row["history"][1]["item_description"] == ""


def test_a_row_that_is_not_dpl_names_its_line_and_writes_nothing(tmp_path, dpl_files):
    from dataset_formats.build.dpl import convert_dpl

    rows, meta = dpl_files
    with open(rows, "a") as handle:
        handle.write(json.dumps({"user_id": "U2", "profile": []}) + "\n")  # no "data"
    out = tmp_path / "train.jsonl"
    with pytest.raises(BuildError, match="rows.jsonl:2: not a DPL row"):
        convert_dpl(rows, meta, out)
    assert not out.exists()
    assert list(tmp_path.glob(".train.jsonl.*")) == []  # no temporary file left behind


def test_an_existing_out_file_is_never_written_over(tmp_path, dpl_files, capsys):
    """convert-dpl replaced a user's 12-row file with its 1 row, exit 0."""
    rows, meta = dpl_files
    out = tmp_path / "mine.jsonl"
    out.write_text("my own rows\n")
    with pytest.raises(SystemExit) as error:
        nextquill_data(["convert-dpl", "--rows", str(rows), "--meta", str(meta), "--out", str(out)])
    assert (
        error.value.code == 2
        and "exists; remove it or name another file" in capsys.readouterr().err
    )
    assert out.read_text() == "my own rows\n"


def test_synthetic_refuses_no_users_and_a_folder_holding_its_file_names(tmp_path, capsys):
    """`synthetic --users 0` wrote 0 reviews with exit 0; a folder holding the user's own
    reviews.jsonl.gz had it replaced."""
    for users in ("0", "-5"):
        with pytest.raises(SystemExit) as error:
            nextquill_data(["synthetic", "--out", str(tmp_path / "s"), "--users", users])
        assert error.value.code == 2 and "must be >= 1" in capsys.readouterr().err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "reviews.jsonl.gz").write_bytes(b"precious")
    with pytest.raises(SystemExit) as error:
        nextquill_data(["synthetic", "--out", str(tmp_path / "mine"), "--users", "2"])
    assert error.value.code == 2 and "already holds reviews.jsonl.gz" in capsys.readouterr().err
    assert (tmp_path / "mine" / "reviews.jsonl.gz").read_bytes() == b"precious"


def test_metadata_that_matches_no_review_writes_nothing_and_a_partial_match_is_counted(
    tmp_path, dpl_files, capsys
):
    """convert-dpl whose metadata named none of the rows' items wrote rows with empty titles,
    exit 0; meta lines without an asin ended in a KeyError trace."""
    rows, _ = dpl_files
    other = write_jsonl(tmp_path / "other.jsonl", [{"asin": "ZZZ", "title": "Elsewhere"}])
    out = tmp_path / "x.jsonl"
    with pytest.raises(SystemExit) as error:
        nextquill_data(
            ["convert-dpl", "--rows", str(rows), "--meta", str(other), "--out", str(out)]
        )
    err = capsys.readouterr().err
    assert error.value.code == 1 and "none of the 3 reviews in rows.jsonl names an item" in err
    assert not out.exists()

    only_a = write_jsonl(tmp_path / "only_a.jsonl", [{"asin": "A", "title": "Book A"}])
    nextquill_data(["convert-dpl", "--rows", str(rows), "--meta", str(only_a), "--out", str(out)])
    assert "1 of 3 reviews name an item that" in capsys.readouterr().out
    assert [review["item_title"] for review in read_jsonl(out)[0]["history"]] == ["Book A", ""]

    amazon_meta = write_jsonl(tmp_path / "meta.jsonl", [{"parent_asin": "A", "title": "Book A"}])
    with pytest.raises(SystemExit) as error:
        nextquill_data(
            [
                "convert-dpl",
                "--rows",
                str(rows),
                "--meta",
                str(amazon_meta),
                "--out",
                str(tmp_path / "y.jsonl"),
            ]
        )
    err = capsys.readouterr().err
    assert error.value.code == 1 and "meta.jsonl:1: not DPL item metadata (no 'asin')" in err


def test_synthetic_users_write_every_review_asked_for(tmp_path, capsys):
    """3 users x 22 reviews made 4 items, so each user wrote 4 reviews (exit 0)."""
    nextquill_data(
        ["synthetic", "--out", str(tmp_path / "s"), "--users", "3", "--reviews-per-user", "22"]
    )
    assert "wrote 66 reviews" in capsys.readouterr().out
    reviews = read_jsonl(tmp_path / "s" / "reviews.jsonl.gz")
    per_user = {}
    for review in reviews:
        per_user[review["user_id"]] = per_user.get(review["user_id"], 0) + 1
    assert sorted(per_user.values()) == [22, 22, 22]


def test_blank_lines_are_skipped_and_a_repeated_asin_keeps_its_first_metadata(
    tmp_path, dpl_files, capsys
):
    """A trailing empty line stopped the conversion ("Expecting value"); of an asin given twice
    the last metadata won without a word (build keeps the first)."""
    rows, meta = dpl_files
    with open(rows, "a") as handle:
        handle.write("\n")
    with open(meta, "a") as handle:
        handle.write(json.dumps({"asin": "A", "title": "Another A"}) + "\n\n")
    out = tmp_path / "out.jsonl"
    nextquill_data(["convert-dpl", "--rows", str(rows), "--meta", str(meta), "--out", str(out)])
    assert "that repeat an asin given before: 1 (the first" in capsys.readouterr().out
    assert read_jsonl(out)[0]["target"]["item_title"] == "Book A"


def test_a_target_review_repeated_in_the_profile_is_dropped_and_counted(
    tmp_path, dpl_files, capsys
):
    """A profile entry that is the row's target itself put the answer into the prompt, with
    "wrote N rows" and no count (found by an adversarial pass)."""
    rows, meta = dpl_files
    target = review("A", 30, "the target")
    write_jsonl(
        rows,
        [
            {"user_id": "U1", "profile": [review("B", 20, "newer"), target], "data": target},
            {"user_id": "U2", "profile": [target], "data": target},
        ],
    )
    out = tmp_path / "train.jsonl"
    nextquill_data(["convert-dpl", "--rows", str(rows), "--meta", str(meta), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "history entries that were their row's target review: 2" in printed
    assert "rows without history: 1" in printed
    first, second = read_jsonl(out)
    assert [h["text"] for h in first["history"]] == ["newer"] and second["history"] == []
