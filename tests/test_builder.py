"""The Amazon Reviews 2023 builder on a hand-made raw fixture whose result is worked out by hand."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dataset_formats.build import BuildError, BuildOptions, build, join_description

SMALL = BuildOptions(
    min_text_chars=10,
    min_description_chars=5,
    max_description_chars=100,
    min_item_users=2,
    min_user_reviews=4,
    max_user_reviews=6,
    targets_per_user=3,
    min_profile_item_users=1,
    min_profile_reviews=1,
    show_progress=False,
)
MS = 1_000_000_000_000


def review(user, item, t, text=None, **extra):
    return {
        "user_id": user,
        "parent_asin": item,
        "asin": item,
        "rating": 4.0,
        "title": f"t-{user}-{item}",
        "text": text or f"review   of {item} by {user}",
        "timestamp": t,
        "helpful_vote": 0,
        **extra,
    }


def item(asin, description, **extra):
    return {
        "parent_asin": asin,
        "title": f"Item {asin}",
        "description": description,
        "categories": ["Books"],
        "rating_number": 10,
        **extra,
    }


def raw_fixture(folder: Path) -> tuple[Path, Path]:
    meta = [
        item("I1", ["Product Description", "first item words"]),
        item("I2", ["second item", "words"]),
        item("I3", "third item as a string"),  # description as a string
        item("I4", ["fourth item words"]),
        item("I5", ["tiny"]),  # description too short -> description_length
        item("I6", ["no categories here"], categories=None),  # missing_categories
    ]
    lines = []
    for user in ("A", "B", "D"):
        for k, asin in enumerate(("I1", "I2", "I3", "I4")):
            t = MS + k if not (user == "A" and k == 3) else 1_000_000_100  # A's last one in seconds
            lines.append(json.dumps(review(user, asin, t)))
    lines.append(
        json.dumps(review("B", "I1", MS + 50, text="a second review of I1"))
    )  # duplicate_item
    lines += [json.dumps(review("C", "I1", MS)), json.dumps(review("C", "I2", MS + 1))]  # k_core
    lines.append(json.dumps(review("D", "I5", MS + 9)))  # item_filtered
    lines.append(json.dumps(review("E", "I1", MS, text="short")))  # short_text
    lines.append('{"user_id": "X", "parent_asin": ')  # malformed_json (line 18)
    lines.append(b'{"user_id": "\xff\xfe"}'.decode("latin-1"))  # invalid_utf8 once re-encoded below
    lines.append(
        json.dumps({k: v for k, v in review("Y", "I1", MS).items() if k != "user_id"})
    )  # missing_user_id
    lines.append(json.dumps(review("Z", "I1", MS) | {"text": None}))  # missing_text
    reviews_path, meta_path = folder / "reviews.jsonl", folder / "meta.jsonl.gz"
    with open(reviews_path, "wb") as handle:
        for line in lines:
            handle.write(line.encode("latin-1") if "\xff" in line else line.encode())
            handle.write(b"\n")
    with gzip.open(meta_path, "wt") as handle:
        handle.write("".join(json.dumps(m) + "\n" for m in meta))
    return reviews_path, meta_path


def read_split(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]


def test_protocol_on_hand_made_fixture(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    report = build([reviews], [meta], tmp_path / "out", SMALL)
    assert report.reviews_read == 21  # 12 kept + 9 dropped, below
    assert dict(report.reviews_dropped) == {
        "malformed_json": 1,
        "invalid_utf8": 1,
        "missing_user_id": 1,
        "missing_text": 1,
        "short_text": 1,
        "item_filtered": 1,
        "duplicate_item": 1,
        "duplicate_text": 0,
        "k_core": 2,
        "profile_item_rare": 0,
        "profile_user_short": 0,
    }
    assert report.reviews_kept == 12 and report.to_json()["accounted"]
    assert dict(report.items_dropped) == {"description_length": 1, "missing_categories": 1}
    assert report.bad_input["review:malformed_json"] == ["reviews.jsonl:18"]
    assert report.bad_input["review:invalid_utf8"] == ["reviews.jsonl:19"]
    assert report.users == 3 and report.rows_per_split == {"train": 3, "validation": 3, "test": 3}

    out = tmp_path / "out"
    train, test = read_split(out, "train"), read_split(out, "test")
    assert [r["user_id"] for r in train] == ["A", "B", "D"]
    a_train, a_test = train[0], test[0]
    assert a_train["target"]["item_id"] == "I2" and [h["item_id"] for h in a_train["history"]] == [
        "I1"
    ]
    # A's review of I4 had its timestamp in seconds: converted to ms it is the latest.
    assert (
        a_test["target"]["item_id"] == "I4" and a_test["target"]["timestamp"] == 1_000_000_100_000
    )
    assert [h["item_id"] for h in a_test["history"]] == ["I1", "I2", "I3"]
    assert a_test["target"]["text"] == "review of I4 by A"  # whitespace collapsed
    i1 = a_test["history"][0]
    assert i1["item_description"] == "first item words"  # "Product Description" heading dropped
    assert a_test["history"][2]["item_description"] == "third item as a string"
    b_test = test[1]
    assert b_test["history"][0]["text"] == "review of I1 by B"  # the earliest of the duplicates
    stats = json.loads((out / "stats.json").read_text())
    assert stats["history_length"]["test"] == {"min": 3.0, "median": 3.0, "mean": 3.0, "max": 3.0}


def test_output_is_deterministic(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    build([reviews], [meta], tmp_path / "a", SMALL)
    build([reviews], [meta], tmp_path / "b", SMALL)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{split}.jsonl"
        ).read_bytes()


def test_strict_turns_a_skip_into_an_error(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    with pytest.raises(BuildError, match=r"reviews.jsonl:18: malformed json \(--strict\)"):
        build(
            [reviews], [meta], tmp_path / "out", BuildOptions(**{**SMALL.__dict__, "strict": True})
        )
    assert not (tmp_path / "out").exists()


def test_truncated_gzip_empty_file_and_unmatched_meta_are_errors(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(reviews.read_bytes())[:-40])
    with pytest.raises(BuildError, match="truncated or corrupt"):
        build([truncated], [meta], tmp_path / "out", SMALL)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(BuildError, match="empty.jsonl: the file is empty"):
        build([reviews], [empty], tmp_path / "out", SMALL)
    other_meta = tmp_path / "other_meta.jsonl"
    other_meta.write_text(json.dumps(item("Q9", ["an unrelated item"])) + "\n")
    with pytest.raises(
        BuildError, match="none of the 16 valid reviews matches an item of the metadata"
    ):
        build([reviews], [other_meta], tmp_path / "out", SMALL)
    with pytest.raises(BuildError, match="no user survived"):
        build(
            [reviews],
            [meta],
            tmp_path / "out",
            BuildOptions(**{**SMALL.__dict__, "min_user_reviews": 50, "max_user_reviews": 60}),
        )
    assert not (tmp_path / "out").exists()
    assert [
        p.name for p in tmp_path.iterdir() if p.name.startswith(".out")
    ] == []  # temp dirs removed


def test_cli_exit_code_and_message(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataset_formats.build.cli",
            "build",
            "--reviews",
            str(empty),
            "--meta",
            str(empty),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1  # a failed run; 2 is a wrong command line
    assert "nextquill-data build: error:" in result.stderr and "the file is empty" in result.stderr
    assert "Traceback" not in result.stderr


def test_description_joining():
    assert join_description(["Product Description", "a  b", "c"]) == "a b c"
    assert join_description("  x \n y ") == "x y"
    assert join_description(None) is None and join_description([1, 2]) is None


def test_shipped_demo_data_builds_and_feeds_the_dataset_type(tmp_path, tiny_tokenizer):
    from dataset_formats.amazon_reviews import load
    from dataset_formats.demo_data import DEMO_META, DEMO_REVIEWS

    report = build(
        [DEMO_REVIEWS], [DEMO_META], tmp_path / "demo", BuildOptions(show_progress=False)
    )
    assert report.to_json()["accounted"] and report.users >= 150
    assert report.rows_per_split["train"] == 8 * report.users
    row = read_split(tmp_path / "demo", "train")[0]
    out = load(tiny_tokenizer, {"nextquill": True, "sequence_len": 4096}).tokenize_prompt(row)
    assert out["cf_input_ids"] and out["nq_history_kept"] == min(8, len(row["history"]))


def test_a_byte_order_mark_before_the_first_line_is_not_a_malformed_line(tmp_path):
    """A file saved by an editor that writes a UTF-8 BOM lost its first review as malformed."""
    from dataset_formats.demo_data import DEMO_META, DEMO_REVIEWS

    marked = tmp_path / "reviews.jsonl"
    marked.write_bytes(b"\xef\xbb\xbf" + gzip.decompress(Path(DEMO_REVIEWS).read_bytes()))
    options = BuildOptions(show_progress=False)
    plain = build([DEMO_REVIEWS], [DEMO_META], tmp_path / "plain", options).to_json()
    with_mark = build([marked], [DEMO_META], tmp_path / "marked", options).to_json()
    assert with_mark["reviews_dropped"] == plain["reviews_dropped"]
    assert with_mark["reviews_kept"] == plain["reviews_kept"] > 0


MEMORY_BOUND_MIB = 3072  # stated bound: peak RSS of a 1M-review build with --memory-limit 1GB


@pytest.mark.slow
def test_million_review_build_stays_within_memory_bound(tmp_path):
    """1M generated reviews (not committed) through the CLI; the child's peak RSS is bounded."""
    from dataset_formats.build.synthetic import write_synthetic_raw

    n_reviews, _ = write_synthetic_raw(tmp_path / "raw", 1_000_000)
    assert n_reviews >= 990_000
    # The builder (and DuckDB, in-process) reports its own peak RSS when it is done.
    measure = (
        "import resource, sys; from dataset_formats.build.cli import main; main(sys.argv[1:]); "
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            measure,
            "build",
            "--reviews",
            str(tmp_path / "raw" / "reviews.jsonl.gz"),
            "--meta",
            str(tmp_path / "raw" / "meta.jsonl.gz"),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--memory-limit",
            "1GB",
            "--max-history",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    peak_mib = int(result.stdout.split("PEAK_KIB")[-1]) / 1024
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["accounted"] and stats["reviews_read"] == n_reviews and stats["users"] > 40_000
    assert peak_mib < MEMORY_BOUND_MIB, f"peak RSS {peak_mib:.0f} MiB"


def test_a_build_is_a_hub_dataset_that_load_dataset_reads_by_split(tmp_path):
    """The folder uploads to the Hub as it is: its card names the three split files, and
    `datasets.load_dataset(folder)` gives train, validation and test with the build's rows."""
    from datasets import load_dataset

    from dataset_formats.demo_data import DEMO_META, DEMO_REVIEWS

    out = tmp_path / "books_demo"
    report = build([DEMO_REVIEWS], [DEMO_META], out, BuildOptions(show_progress=False))
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "Amazon Reviews 2023" in card
    assert "| `--min-user-reviews` | 18 |" in card
    loaded = load_dataset(str(out))
    assert {split: len(rows) for split, rows in loaded.items()} == report.rows_per_split
    assert loaded["test"][0]["user_id"] == read_split(out, "test")[0]["user_id"]
    again = build([DEMO_REVIEWS], [DEMO_META], out, BuildOptions(show_progress=False))
    assert again.rows_per_split == report.rows_per_split  # a build with a card is replaced


def test_the_build_logs_to_stderr_and_prints_only_its_stats_json_on_stdout(tmp_path):
    reviews, meta = raw_fixture(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "dataset_formats.build.cli", "build", "--reviews", str(reviews)]
        + ["--meta", str(meta), "--out", str(tmp_path / "out")]
        + [f"--{k.replace('_', '-')}={v}" for k, v in SMALL.thresholds().items()],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stats = json.loads(result.stdout)  # pipeable: `nextquill-data build ... | jq .users`
    assert stats["users"] > 0 and stats["accounted"]
    assert "[nextquill-data] read" in result.stderr
