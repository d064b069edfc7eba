"""`nextquill evaluate / compare / inspect` and the decoding they use, on the tiny local model."""

import csv
import io
import json
from html.parser import HTMLParser

import pytest
import torch
import yaml

from nextquill_plugin.batching import padded_batch
from nextquill_plugin.cli import main as nextquill
from nextquill_plugin.evaluation.compare import RunMetrics, comparison_table, load_run
from nextquill_plugin.evaluation.generation import GenerationSettings, generate_continuations

from .conftest import sharpened_tiny_model


@pytest.fixture(scope="module")
def steered_model(tiny_model_dir):
    return sharpened_tiny_model(tiny_model_dir, 3.0).eval()


def slow_greedy(model, prompt, counterfactual, steps, gamma, penalty, scope, eos):
    """Decoding written out: one unpadded, uncached forward per token and row."""
    generated: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, -1]
            scores = logits
            if gamma > 0:
                cf_logits = model(torch.tensor([counterfactual + generated])).logits[0, -1]
                with_history = torch.log_softmax(logits, -1)
                scores = with_history + gamma * (with_history - torch.log_softmax(cf_logits, -1))
        seen = set(generated) | (set(prompt) if scope == "all" else set())
        scores = scores.clone()
        for token in seen:
            value = scores[token]
            scores[token] = value * penalty if value < 0 else value / penalty
        token = int(scores.argmax())
        if token == eos:
            break
        generated.append(token)
    return generated


@pytest.mark.parametrize(
    "gamma, penalty, scope",
    [(0.0, 1.0, "all"), (0.0, 1.2, "all"), (1.5, 1.0, "all"), (1.0, 1.3, "generated")],
)
def test_batched_decoding_equals_the_slow_loop(
    steered_model, tiny_tokenizer, gamma, penalty, scope
):
    ids = tiny_tokenizer(
        ["The story follows a family", "I found it", "Great cover and a clear print. The plot"]
    )["input_ids"]
    counterfactual = [ids[1], ids[0], ids[1]]  # any other context works as the contrast
    settings = GenerationSettings(
        max_new_tokens=6,
        batch_size=3,
        repetition_penalty=penalty,
        penalty_scope=scope,
        cos_gamma=gamma,
    )
    eos = tiny_tokenizer.eos_token_id
    fast = generate_continuations(
        steered_model,
        ids,
        settings,
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=eos,
        counterfactual_prompts=counterfactual,
        show_progress=False,
    )
    slow = [
        slow_greedy(steered_model, p, c, 6, gamma, penalty, scope, eos)
        for p, c in zip(ids, counterfactual, strict=True)
    ]
    assert fast == slow
    assert any(fast)


def test_cos_with_gamma_zero_is_plain_decoding_and_gamma_changes_it(steered_model, tiny_tokenizer):
    ids = tiny_tokenizer(["The plot has a few", "Would buy again as"])["input_ids"]
    counterfactual = tiny_tokenizer(["x", "y"])["input_ids"]
    common = dict(
        pad_token_id=tiny_tokenizer.pad_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        show_progress=False,
    )
    plain = generate_continuations(
        steered_model, ids, GenerationSettings(max_new_tokens=8), **common
    )
    gamma_zero = generate_continuations(
        steered_model,
        ids,
        GenerationSettings(max_new_tokens=8, cos_gamma=0.0),
        counterfactual_prompts=counterfactual,
        **common,
    )
    steered = generate_continuations(
        steered_model,
        ids,
        GenerationSettings(max_new_tokens=8, cos_gamma=4.0),
        counterfactual_prompts=counterfactual,
        **common,
    )
    assert gamma_zero == plain
    assert steered != plain


def test_left_padding_puts_every_prompt_at_the_end():
    ids, mask = padded_batch([[5, 6, 7], [9]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_bad_generation_settings_are_named():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1.*penalty_scope"):
        GenerationSettings(max_new_tokens=0, penalty_scope="prompt")


@pytest.fixture(scope="module")
def eval_recipe(tmp_path_factory, tiny_model_dir, synthetic_splits):
    """A recipe whose training file sits next to a test split, as the builder writes them."""
    folder = tmp_path_factory.mktemp("eval_recipe")
    for split in ("train", "test"):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for row in synthetic_splits[split][:6]:
                handle.write(json.dumps(row) + "\n")
    recipe = {
        "base_model": str(tiny_model_dir),
        "datasets": [
            {
                "path": str(folder / "train.jsonl"),
                "ds_type": "json",
                "type": "dataset_formats.amazon_reviews",
            }
        ],
        "sequence_len": 512,
        "nextquill": True,
        "nextquill_history_k": 2,
    }
    path = folder / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_command_writes_predictions_and_metrics(eval_recipe, tmp_path, synthetic_splits):
    from nextquill_plugin.evaluation.metrics import evaluate_texts

    out = tmp_path / "eval"
    nextquill(
        ["evaluate", str(eval_recipe), "--out", str(out), "--max-new-tokens", "12"]
        + ["--bootstrap", "50", "--name", "untuned", "--penalty-scope", "generated"]
    )
    predictions = read_jsonl(out / "predictions.jsonl")
    test_rows = synthetic_splits["test"][:6]
    assert [p["user_id"] for p in predictions] == [r["user_id"] for r in test_rows]
    assert [p["reference"] for p in predictions] == [r["target"]["text"] for r in test_rows]
    assert len({p["prompt_id"] for p in predictions}) == len(predictions)
    document = json.loads((out / "metrics.json").read_text())
    assert document["name"] == "untuned" and document["n"] == 6
    assert document["generation"]["repetition_penalty"] == 1.2
    assert document["generation"]["penalty_scope"] == "generated"
    recomputed = evaluate_texts(
        [p["prediction"] for p in predictions], [p["reference"] for p in predictions]
    )
    for name, estimate in recomputed.metrics.items():
        assert document["metrics"][name]["value"] == pytest.approx(estimate.value), name
    assert load_run(out).name == "untuned"


def test_evaluate_reports_bad_input_plainly(eval_recipe, tmp_path):
    with pytest.raises(SystemExit, match="neither adapter_config.json"):
        nextquill(["evaluate", str(eval_recipe), "--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="must be smaller than the recipe's sequence_len"):
        nextquill(["evaluate", str(eval_recipe), "--max-new-tokens", "600"])
    with pytest.raises(SystemExit, match="validation.jsonl does not exist"):
        nextquill(["evaluate", str(eval_recipe), "--split", "validation"])
    with pytest.raises(SystemExit, match="recipe .*missing.yml does not exist"):
        nextquill(["evaluate", str(tmp_path / "missing.yml")])


def test_lora_checkpoint_is_loaded_and_merged(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from nextquill_plugin.evaluation.generation import load_model_for_generation

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 9, 14, 3, 7]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        merged, _, description = load_model_for_generation(
            str(tiny_model_dir), str(tmp_path / "adapter")
        )
        untouched = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(untouched, expected, atol=1e-3)
    assert "LoRA adapter" in description


def run(name, r1, rl, meteor, bleu, n=100, data="test.jsonl"):
    values = {"rouge1": r1, "rougeL": rl, "meteor": meteor, "bleu": bleu}
    return RunMetrics(name, n, data, values, {k: (v * 0.9, v * 1.1) for k, v in values.items()})


def test_compare_markdown_marks_the_best_and_the_relative_improvement():
    runs = [
        run("ContextSFT", 0.1661, 0.0836, 0.2158, 2.1214),
        run("NextQuill", 0.2318, 0.1270, 0.2580, 3.5718),
    ]
    table = comparison_table(runs, baseline="ContextSFT")
    assert table.splitlines()[:4] == [
        "| Method | ROUGE-1 | ROUGE-L | METEOR | BLEU |",
        "|---|---|---|---|---|",
        "| ContextSFT | 0.1661 | 0.0836 | 0.2158 | 2.1214 |",
        "| NextQuill | **0.2318** | **0.1270** | **0.2580** | **3.5718** |",
    ]
    # The paper's Table 2 rounding of the same numbers: +39.6%, +51.9%, +19.6%, +68.4%
    assert table.splitlines()[-1] == "| NextQuill | +39.6% | +51.9% | +19.6% | +68.4% |"


def test_compare_csv_has_intervals_improvements_and_best_flags():
    runs = [run("SFT", 0.2, 0.1, 0.3, 1.0), run("NextQuill", 0.1, 0.2, 0.3, 2.0)]
    rows = list(
        csv.DictReader(
            io.StringIO(comparison_table(runs, baseline="SFT", fmt="csv", intervals=True))
        )
    )
    assert rows[0]["Method"] == "SFT" and rows[0]["ROUGE-1"] == "0.2000"
    assert rows[0]["ROUGE-1 CI"] == "0.1800-0.2200"
    assert rows[1]["BLEU vs SFT"] == "+1.0000"
    assert rows[0]["best"] == "ROUGE-1 METEOR" and rows[1]["best"] == "ROUGE-L METEOR BLEU"
    with pytest.raises(ValueError, match="baseline 'Qwen' is not one of the runs"):
        comparison_table(runs, baseline="Qwen")


def test_compare_command_warns_about_different_data(tmp_path, capsys):
    for name, data in (("a", "test.jsonl"), ("b", "other.jsonl")):
        metrics = {
            m: {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
            for m in ("rouge1", "rougeL", "meteor", "bleu")
        }
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(
            json.dumps({"name": name, "n": 3, "data": data, "metrics": metrics})
        )
    nextquill(
        ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--csv", str(tmp_path / "t.csv")]
    )
    captured = capsys.readouterr()
    assert "not evaluated on the same data" in captured.err
    assert "| a | **0.5000** |" in captured.out
    assert (tmp_path / "t.csv").read_text().startswith("Method,ROUGE-1")


class SpanCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.spans, self.text = [], [], {}

    def handle_starttag(self, tag, attrs):
        if tag not in ("meta", "br"):  # void elements have no end tag
            self.stack.append(tag)
        if tag == "span" and dict(attrs).get("class", "").split()[0] == "t":  # token spans
            self.spans.append(dict(attrs))

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"


def test_inspect_writes_valid_html_terminal_view_and_plots(
    eval_recipe, tmp_path, capsys, tiny_tokenizer, tiny_model_dir
):
    from dataset_formats.amazon_reviews import load

    out = tmp_path / "inspect"
    nextquill(
        ["inspect", str(eval_recipe), "--samples", "2", "--plot-samples", "4", "--out", str(out)]
        + ["--against", str(tiny_model_dir), "--against-name", "same model as a checkpoint"]
    )
    page = (out / "tokens.html").read_text()
    parser = SpanCollector()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>") and not parser.stack
    rows = [
        json.loads(line) for line in (eval_recipe.parent / "test.jsonl").read_text().splitlines()
    ]
    strategy = load(tiny_tokenizer, yaml.safe_load(eval_recipe.read_text()))
    targets = sum(
        len([t for t in strategy.tokenize_prompt(r)["labels"] if t != -100]) for r in rows[:2]
    )
    assert len(parser.spans) == targets
    for span in parser.spans:
        numbers = dict(part.split("=") for part in span["title"].split())
        effect = float(numbers["p_with"]) - float(numbers["p_without"])
        assert float(numbers["effect"]) == pytest.approx(effect, abs=2e-4)
        assert float(numbers["weight"]) in (0.1, 0.9)
    terminal = capsys.readouterr().out
    assert "\x1b[" not in terminal  # not a terminal here: no colour codes in the captured text
    from nextquill_plugin.evaluation.inspection_render import use_colour

    assert not use_colour()
    for name in ("logprob_difference.png", "preference_tokens.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
