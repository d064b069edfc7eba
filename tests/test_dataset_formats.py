"""Prompt building of dataset_formats.amazon_reviews and dataset_formats.paired."""

from __future__ import annotations

import copy

import pytest

from dataset_formats.amazon_reviews import load as load_amazon
from dataset_formats.amazon_reviews import select_history
from dataset_formats.paired import load as load_paired
from dataset_formats.prompting import (
    CUT_TARGET,
    DROPPED_ALL_HISTORY,
    DROPPED_OLD_HISTORY,
    SHORTENED_DESCRIPTIONS,
)

CFG = {"nextquill": True, "sequence_len": 2048}


def target_part(ids, labels):
    return [t for t, lab in zip(ids, labels, strict=True) if lab != -100]


def test_prompts_differ_only_in_the_history_block(tiny_tokenizer, synthetic_splits):
    row = synthetic_splits["train"][4]
    out = load_amazon(tiny_tokenizer, {**CFG, "nextquill_history_k": 2}).tokenize_prompt(row)
    with_text = tiny_tokenizer.decode(out["input_ids"])
    cf_text = tiny_tokenizer.decode(out["cf_input_ids"])
    head, _, rest = with_text.partition("[User's Past Reviews]:\n")
    history_block, _, tail = rest.partition("\n\n[Output Review Rating]")
    assert cf_text == f"{head}[User's Past Reviews]:\nNone\n\n[Output Review Rating]{tail}"
    assert (
        "[Review 1]" in history_block
        and "[Review 2]" in history_block
        and "[Review 3]" not in history_block
    )
    # newest first: review 1 is the latest history review
    newest = max(row["history"], key=lambda r: r["timestamp"])
    assert history_block.index(newest["text"]) < history_block.index("[Review 2]")


def test_targets_are_identical_aligned_and_end_with_eos(tiny_tokenizer, synthetic_splits):
    row = synthetic_splits["train"][0]
    out = load_amazon(tiny_tokenizer, CFG).tokenize_prompt(row)
    target_with = target_part(out["input_ids"], out["labels"])
    target_cf = target_part(out["cf_input_ids"], out["cf_labels"])
    assert target_with == target_cf
    assert target_with[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(target_with[:-1]) == row["target"]["text"]
    # the target is the suffix of both sequences and the prompt carries no label
    n = len(target_with)
    assert out["input_ids"][-n:] == target_with and out["cf_input_ids"][-n:] == target_cf
    assert set(out["labels"][:-n]) == {-100} and set(out["cf_labels"][:-n]) == {-100}
    assert len(out["attention_mask"]) == len(out["input_ids"])


def test_chat_template_is_used_when_present_else_plain(tiny_tokenizer, synthetic_splits):
    row = synthetic_splits["train"][0]
    chat = tiny_tokenizer.decode(load_amazon(tiny_tokenizer, CFG).tokenize_prompt(row)["input_ids"])
    assert chat.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in chat
    plain_tok = copy.deepcopy(tiny_tokenizer)
    plain_tok.chat_template = None
    plain = plain_tok.decode(load_amazon(plain_tok, CFG).tokenize_prompt(row)["input_ids"])
    assert "<|im_start|>" not in plain and "### Review:\n" in plain


def test_truncation_drops_oldest_history_first_then_shortens(tiny_tokenizer, synthetic_splits):
    row = copy.deepcopy(synthetic_splits["train"][6])  # 8 history reviews
    for k, review in enumerate(row["history"]):
        review["title"] = f"marker{k:02d}"  # history is oldest first: marker00 is the oldest
    strategy = load_amazon(tiny_tokenizer, {**CFG, "sequence_len": 10_000})
    full = strategy.tokenize_prompt(row)
    assert full["nq_truncation"] == 0 and full["nq_history_kept"] == 8
    target_len = len(target_part(full["input_ids"], full["labels"]))
    budget = len(full["input_ids"]) - 200
    tight = load_amazon(tiny_tokenizer, {**CFG, "sequence_len": budget}).tokenize_prompt(row)
    assert len(tight["input_ids"]) <= budget
    assert tight["nq_truncation"] == DROPPED_OLD_HISTORY
    assert 1 <= tight["nq_history_kept"] < 8
    text = tiny_tokenizer.decode(tight["input_ids"])
    kept = tight["nq_history_kept"]
    assert all(f"marker{k:02d}" in text for k in range(8 - kept, 8))  # the newest stay
    assert all(f"marker{k:02d}" not in text for k in range(8 - kept))  # the oldest went first
    assert "[Output Review Rating]" in text and "[Output Review Title]" in text
    assert len(target_part(tight["input_ids"], tight["labels"])) == target_len  # target intact

    # A huge description forces shortening once a single review is left.
    row["target"]["item_description"] = "long words " * 2000
    short = load_amazon(tiny_tokenizer, {**CFG, "sequence_len": 900}).tokenize_prompt(row)
    assert short["nq_truncation"] & SHORTENED_DESCRIPTIONS
    assert len(short["input_ids"]) <= 900 and short["nq_history_kept"] >= 1
    assert "[Item Title]" in tiny_tokenizer.decode(short["input_ids"])


def test_target_is_cut_only_when_it_alone_exceeds_the_budget(tiny_tokenizer, synthetic_splits):
    row = copy.deepcopy(synthetic_splits["train"][0])
    row["target"]["text"] = "a very long review " * 400
    out = load_amazon(tiny_tokenizer, {**CFG, "sequence_len": 600}).tokenize_prompt(row)
    assert out["nq_truncation"] & CUT_TARGET and out["nq_truncation"] & DROPPED_ALL_HISTORY
    assert len(out["input_ids"]) <= 600
    assert out["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert out["cf_input_ids"] == []  # no history left: no causal contrast to learn from


def test_no_counterfactual_without_nextquill_and_no_history_for_sft(
    tiny_tokenizer, synthetic_splits
):
    row = synthetic_splits["train"][3]
    context_sft = load_amazon(
        tiny_tokenizer, {"nextquill": False, "sequence_len": 2048}
    ).tokenize_prompt(row)
    assert "cf_input_ids" not in context_sft
    sft = load_amazon(
        tiny_tokenizer,
        {"nextquill": False, "sequence_len": 2048, "nextquill_include_history": False},
    ).tokenize_prompt(row)
    assert "[Review 1]" not in tiny_tokenizer.decode(sft["input_ids"])
    assert "[User's Past Reviews]:\nNone" in tiny_tokenizer.decode(sft["input_ids"])


def test_bm25_selection_prefers_the_most_similar_items():
    history = [
        {"item_title": "Garden tools", "item_description": "rakes and spades", "timestamp": 3},
        {"item_title": "Jazz records", "item_description": "saxophone vinyl", "timestamp": 2},
        {"item_title": "Rock records", "item_description": "guitar vinyl", "timestamp": 1},
    ]
    target = {"item_title": "Blues records", "item_description": "vinyl with saxophone"}
    assert [r["timestamp"] for r in select_history(history, target, 2, "recent")] == [3, 2]
    assert [r["timestamp"] for r in select_history(history, target, 2, "bm25")] == [2, 1]


def test_paired_type_accepts_lists_strings_and_messages(tiny_tokenizer):
    strategy = load_paired(tiny_tokenizer, CFG)
    a = strategy.tokenize_prompt(
        {"prompt": "Write a tweet", "history": ["I love tea", "Tea again"], "response": "More tea"}
    )
    b = strategy.tokenize_prompt(
        {"query": "Write a tweet", "profile": "I love tea", "output": "More tea"}
    )
    c = strategy.tokenize_prompt(
        {
            "messages": [
                {"role": "user", "content": "Write a tweet"},
                {"role": "assistant", "content": "More tea"},
            ],
            "history": ["I love tea"],
        }
    )
    for out in (a, b, c):
        assert target_part(out["input_ids"], out["labels"]) == target_part(
            out["cf_input_ids"], out["cf_labels"]
        )
        assert (
            tiny_tokenizer.decode(target_part(out["input_ids"], out["labels"])[:-1]) == "More tea"
        )
    assert "[Entry 2]: Tea again" in tiny_tokenizer.decode(a["input_ids"])
    assert tiny_tokenizer.decode(b["input_ids"]) == tiny_tokenizer.decode(c["input_ids"])
    with pytest.raises(ValueError, match="needs a query"):
        strategy.tokenize_prompt({"history": ["x"], "response": "y"})
    with pytest.raises(ValueError, match="history must be a string or a list"):
        strategy.tokenize_prompt({"prompt": "q", "history": 3, "response": "y"})
    # a system message and an earlier answer were dropped from the query without a word
    chat = [
        {"role": "system", "content": "Answer as a pirate"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Ahoy"},
        {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Arr"},
    ]
    with pytest.raises(ValueError, match="has assistant, system turns before the last assistant"):
        strategy.tokenize_prompt({"messages": chat, "history": ["x"]})
    # so was a question after the last answer
    with pytest.raises(ValueError, match=r"goes on after its last assistant message \(1 more\)"):
        strategy.tokenize_prompt({"messages": chat[1:3] + chat[3:4], "history": ["x"]})


def test_bad_rows_and_labels_fail_clearly(tiny_tokenizer):
    with pytest.raises(ValueError, match="has no target review text"):
        load_amazon(tiny_tokenizer, CFG).tokenize_prompt({"user_id": "u", "history": []})
    with pytest.raises(ValueError, match="unknown keys"):
        load_amazon(tiny_tokenizer, {**CFG, "nextquill_field_labels": {"titel": "x"}})


def test_the_default_prompt_settings_keep_their_fingerprint():
    """Prepared-data caches are keyed by this fingerprint: a refactoring of the settings must not
    change it (values computed before the defaults were declared once, in ``PromptArgs``)."""
    from dataset_formats.settings import PromptSettings

    assert PromptSettings().fingerprint() == "9c455afc91fe3a44"
    assert PromptSettings(emit_counterfactual=False).fingerprint() == "ecace9e5a8eae23a"
    assert PromptSettings.from_cfg({}) == PromptSettings(emit_counterfactual=False)
    assert PromptSettings.from_cfg(CFG) == PromptSettings()


def test_a_prompt_too_long_for_sequence_len_survives_the_trip_between_processes():
    """Axolotl's dataset workers send a row's error to the main process pickled; the error
    could not be rebuilt there, and `axolotl train` / `nextquill weights` waited forever."""
    import pickle

    from dataset_formats.prompting import PromptTooLong

    error = pickle.loads(pickle.dumps(PromptTooLong("sequence_len=100 cannot hold it", 218)))
    assert isinstance(error, ValueError) and error.prompt_tokens == 218
    assert str(error) == "sequence_len=100 cannot hold it"


@pytest.mark.slow  # an interpreter that imports Axolotl
def test_a_sequence_len_too_short_for_any_prompt_stops_the_weights_pass_with_the_reason(
    tiny_model_dir, synthetic_splits, tmp_path
):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from nextquill_common.jsonl import write_jsonl
    from nextquill_common.offline import offline_env
    from nextquill_plugin.demo.local_runs import tiny_recipe

    write_jsonl(tmp_path / "train.jsonl", synthetic_splits["train"][:2])
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "train.jsonl", tmp_path, sequence_len=100)
    (tmp_path / "recipe.yml").write_text(yaml.safe_dump(recipe))
    nextquill = Path(sys.executable).parent / "nextquill"
    result = subprocess.run(
        [str(nextquill), "weights", str(tmp_path / "recipe.yml")],
        capture_output=True, text=True, env=offline_env(), timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "cannot hold even the prompt without history" in result.stderr
    assert f"row user_id={synthetic_splits['train'][0]['user_id']!r}" in result.stderr
    assert f"in {tmp_path / 'train.jsonl'}: sequence_len=100" in result.stderr
