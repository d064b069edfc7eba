"""Bad rows of both dataset types are named and skipped (or stop the run); history truncation."""

from __future__ import annotations

import json
import logging
import re

import pytest


def test_dataset_types_need_the_plugin_registered(tiny_tokenizer):
    from dataset_formats.amazon_reviews import load

    with pytest.raises(ValueError, match="plugins:\n    - nextquill_plugin.NextQuillPlugin"):
        load(tiny_tokenizer, {"sequence_len": 512})  # what Axolotl leaves without the plugin
    load(tiny_tokenizer, {"plugins": ["nextquill_plugin.NextQuillPlugin"], "sequence_len": 512})


BAD_AMAZON_ROWS = [
    ({"target": {"text": 5}}, "target.text must be non-empty text, got int"),
    ({"history": ["a review as a string"]}, "history[0] must be a review object, got str"),
    ({"target_description": ["long"] * 50}, "target.item_description must be text, got list"),
    ({"history_rating": {"stars": 5}}, "history[0].rating must be a number from 1 to 5, got {"),
    ({"history_rating": "five"}, "history[0].rating must be a number from 1 to 5, got 'five'"),
    ({"history_rating": 7}, "history[0].rating must be a number from 1 to 5, got 7"),
    ({"drop_history": True}, "has no history key"),
]


def bad_amazon_row(good: dict, change: dict) -> dict:
    row = json.loads(json.dumps(good))
    if "target" in change:
        row["target"].update(change["target"])
    if "history" in change:
        row["history"] = change["history"]
    if "target_description" in change:
        row["target"]["item_description"] = change["target_description"]
    if "history_rating" in change:
        row["history"][0]["rating"] = change["history_rating"]
    if change.get("drop_history"):
        del row["history"]
    return row


@pytest.mark.parametrize(("change", "message"), BAD_AMAZON_ROWS)
def test_a_bad_amazon_row_is_named_and_skipped_or_stops_in_strict_mode(
    tiny_tokenizer, synthetic_splits, caplog, change, message
):
    from dataset_formats.amazon_reviews import load
    from dataset_formats.strategy import BadRow

    good = synthetic_splits["train"][0]
    row = bad_amazon_row(good, change)
    strategy = load(tiny_tokenizer, {"nextquill": True, "sequence_len": 512})
    assert strategy.filter_rows(good)
    with caplog.at_level(logging.WARNING, logger="axolotl.dataset_formats"):
        assert strategy.filter_rows(row) is False
    assert message in caplog.text and f"user_id={good['user_id']!r}" in caplog.text
    strict = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 512, "nextquill_strict_rows": True}
    )
    with pytest.raises(BadRow, match=re.escape(message)):
        strict.filter_rows(row)
    with pytest.raises(BadRow, match="dataset_formats.amazon_reviews row"):
        strategy.tokenize_prompt(row)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "response": 7}, "the response must be text, got int"),
        ({"query": "q", "response": "r", "history": ["ok", 3]}, "history[1] must be text, got int"),
        ({"messages": "not a list", "history": []}, "`messages` must be a list"),
        ({"query": "q", "response": "  "}, "the response is empty"),
    ],
)
def test_a_bad_paired_row_is_named(tiny_tokenizer, row, message):
    from dataset_formats.paired import load
    from dataset_formats.strategy import BadRow

    strategy = load(tiny_tokenizer, {"nextquill": True, "sequence_len": 512})
    assert strategy.filter_rows(row) is False
    with pytest.raises(BadRow, match=re.escape(message)):
        strategy.tokenize_prompt(row)


def test_a_newest_entry_too_long_alone_does_not_drop_the_others(tiny_tokenizer, synthetic_splits):
    from dataset_formats.amazon_reviews import load
    from dataset_formats.prompting import DROPPED_ALL_HISTORY, SKIPPED_LONG_ENTRY

    row = json.loads(json.dumps(synthetic_splits["train"][0]))
    newest = max(row["history"], key=lambda r: r["timestamp"])
    newest["text"] = "word " * 2000  # far beyond sequence_len on its own
    out = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 700, "nextquill_history_k": 3}
    ).tokenize_prompt(row)
    assert out["nq_truncation"] & SKIPPED_LONG_ENTRY
    assert not out["nq_truncation"] & DROPPED_ALL_HISTORY
    assert out["nq_history_kept"] >= 1 and out["cf_input_ids"]
    assert "word word word" not in tiny_tokenizer.decode(out["input_ids"])
    assert len(out["input_ids"]) <= 700


def write_lines(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_data_files_axolotl_cannot_load_are_refused_naming_file_and_line(
    synthetic_splits, tmp_path, caplog
):
    from dataset_formats.checks import check_data_file

    kind = "dataset_formats.amazon_reviews"
    good = [json.dumps(r) for r in synthetic_splits["train"][:3]]
    with pytest.raises(ValueError, match="empty.jsonl is empty"):
        check_data_file(write_lines(tmp_path / "empty.jsonl", ["", "  "]), kind)
    with pytest.raises(ValueError, match=r"not_json.jsonl:1 is not a JSON object"):
        check_data_file(write_lines(tmp_path / "not_json.jsonl", ["user,text", "u1,hi"]), kind)
    cut = write_lines(tmp_path / "cut.jsonl", good)
    with open(cut, "a") as handle:
        handle.write(good[0][: len(good[0]) // 2])  # a write that stopped half-way
    with pytest.raises(ValueError, match=r"cut.jsonl:4 is not a JSON object"):
        check_data_file(cut, kind)
    with pytest.raises(ValueError, match=r"none of the first 2 rows of .*bad.jsonl.*bad.jsonl:1"):
        check_data_file(write_lines(tmp_path / "bad.jsonl", ['{"user_id": "u"}', "{}"]), kind)
    mixed = write_lines(tmp_path / "mixed.jsonl", [good[0], "{}", good[1]])
    with caplog.at_level(logging.WARNING):
        check_data_file(mixed, kind)  # some bad rows: named by line, skipped when loaded
    assert "mixed.jsonl:2: has no target review text" in caplog.text
    check_data_file(write_lines(tmp_path / "ok.jsonl", good), kind)


def test_a_row_without_history_is_named_by_file_and_line_when_the_recipe_loads(
    load_recipe, synthetic_splits, tmp_path, caplog
):
    """Through Axolotl's config loading (as `axolotl train` runs it): a user row without its
    history key used to train silently as an ordinary row; it is named and skipped."""
    rows = [dict(r) for r in synthetic_splits["train"][:3]]
    del rows[1]["history"]
    train = write_lines(tmp_path / "no_history.jsonl", [json.dumps(r) for r in rows])
    with caplog.at_level(logging.WARNING):
        load_recipe(datasets=[{"path": str(train), "type": "dataset_formats.amazon_reviews"}])
    assert "no_history.jsonl:2: has no history key" in caplog.text
    assert "the row will be skipped" in caplog.text


def test_an_empty_train_file_stops_the_recipe_with_its_name(load_recipe, tmp_path):
    empty = write_lines(tmp_path / "empty_train.jsonl", [])
    with pytest.raises(Exception, match="empty_train.jsonl is empty"):
        load_recipe(datasets=[{"path": str(empty), "type": "dataset_formats.amazon_reviews"}])


def test_a_bad_row_is_named_by_user_and_target_item(tiny_tokenizer, synthetic_splits):
    """A user has one row per target: the user id alone would name eight rows."""
    from dataset_formats.amazon_reviews import load
    from dataset_formats.strategy import BadRow

    row = bad_amazon_row(synthetic_splits["train"][0], {"target": {"text": 5}})
    strategy = load(
        tiny_tokenizer, {"nextquill": True, "sequence_len": 512, "nextquill_strict_rows": True}
    )
    item = row["target"]["item_id"]
    with pytest.raises(BadRow, match=f"user_id=.*, target item_id={item!r}"):
        strategy.filter_rows(row)
