"""Recipe values and prepared rows that cannot work are refused, naming the key and the fix."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nextquill_alpha": "0.05"}, "nextquill_alpha: Input should be a valid number"),
        ({"nextquill_alpha": "abc"}, "nextquill_alpha: Input should be a valid number"),
        ({"nextquill_delta": float("nan")}, "nextquill_delta: Input should be a finite number"),
        (
            {"nextquill_high_weight": float("inf")},
            "nextquill_high_weight: Input should be a finite",
        ),
        ({"nextquill_alpha": "5e-2"}, "write it as a decimal (e.g. 0.05) or with a dot"),
        (
            {"nextquill_high_weight": 0.0, "nextquill_low_weight": 0.0},
            "nextquill_high_weight (lambda) is 0, so every token weight is 0",
        ),
        ({"nextquill_history_k": 0}, "nextquill_history_k"),
        (
            {"nextquill_field_labels": {"review": "[R{j}]"}},
            "review: '[R{j}]' uses {j}; it may use {i}",
        ),
        ({"nextquil_alpha": 0.5}, "unknown key nextquil_alpha: did you mean nextquill_alpha?"),
        ({"nextquill_histroy_k": 2}, "did you mean nextquill_history_k?"),
    ],
)
def test_bad_recipe_values_are_refused_naming_the_key(load_recipe, overrides, message):
    with pytest.raises(Exception) as error:
        load_recipe(**overrides)
    assert message in str(error.value)


def test_plugin_keys_on_axolotls_command_line_are_refused():
    from nextquill_plugin.axolotl.args import refuse_cli_overrides

    with pytest.raises(ValueError, match="--nextquill_alpha on the command line does not reach"):
        refuse_cli_overrides(["/venv/bin/axolotl", "train", "r.yml", "--nextquill_alpha", "0.7"])
    with pytest.raises(ValueError, match="--sweep"):
        refuse_cli_overrides(["/x/axolotl/cli/train.py", "r.yml", "--nextquill_delta=0.1"])
    refuse_cli_overrides(["/venv/bin/axolotl", "train", "r.yml", "--learning_rate", "1e-4"])
    refuse_cli_overrides(["/venv/bin/nextquill", "weights", "r.yml", "--nextquill_alpha", "0.7"])


def test_rows_prepared_by_another_recipe_are_refused(tiny_tokenizer, synthetic_splits):
    from datasets import Dataset

    from dataset_formats.amazon_reviews import load
    from dataset_formats.checks import check_prompt_settings

    rows = synthetic_splits["train"][:3]
    plugin = ["nextquill_plugin.NextQuillPlugin"]
    context_sft = {"plugins": plugin, "nextquill": False, "sequence_len": 512}
    nextquill = {**context_sft, "nextquill": True}
    prepared = Dataset.from_list(
        [load(tiny_tokenizer, context_sft).tokenize_prompt(r) for r in rows]
    )

    class Cfg(dict):
        __getattr__ = dict.get

    check_prompt_settings(Cfg(context_sft), prepared, "train_dataset")  # its own rows
    with pytest.raises(ValueError, match="made with other NextQuill settings"):
        check_prompt_settings(Cfg(nextquill), prepared, "train_dataset")
    other_k = Cfg({**context_sft, "nextquill_history_k": 2})
    with pytest.raises(ValueError, match="dataset_prepared_path"):
        check_prompt_settings(other_k, prepared, "train_dataset")


def test_nextquill_without_a_single_paired_row_is_an_error():
    from datasets import Dataset

    from dataset_formats.checks import describe_rows

    alpaca_only = Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}])
    with pytest.raises(ValueError, match="it would train plain SFT"):
        describe_rows(alpaca_only, "train_dataset")
    describe_rows(alpaca_only, "eval_dataset")  # a warning only


def test_a_wrong_override_after_the_double_dash_is_a_usage_error(recipes, capsys):
    """A misspelled key, a value its key's type refuses and a pair without -- are wrong command
    lines: exit 2 with the usage line (`-- --sequence_len abc` ended in "invalid literal for
    int()" with exit 1, `-- sequence_len=2048` with exit 1)."""
    from nextquill_plugin.cli import main as nextquill

    for command in ("evaluate", "prompts", "inspect", "weights"):
        for overrides, message in (
            (["--nextquill_histroy_k", "2"], "unknown key nextquill_histroy_k: did you mean"),
            # an Axolotl key too: `-- --sequnce_len 2048` evaluated at the recipe's length, exit 0
            (["--sequnce_len", "2048"], "unknown key sequnce_len: did you mean sequence_len"),
            (["--sequence_len", "abc"], "sequence_len: 'abc' is not valid"),
            (["sequence_len=2048"], "unexpected argument 'sequence_len=2048' after --"),
            # NextQuill's keys by their types too (`--nextquill_alpha abc` was exit 0 or 1); a
            # value left out was true, i.e. sequence_len 1; a second -- an empty key
            (["--nextquill_alpha", "abc"], "nextquill_alpha: 'abc' is not valid"),
            (["--sequence_len"], "--sequence_len needs a value"),
            (["--sequence_len", "600", "--", "--seed", "1"], "a second -- among the overrides"),
        ):
            with pytest.raises(SystemExit) as error:
                nextquill([command, str(recipes["amazon"]), "--", *overrides])
            err = capsys.readouterr().err
            assert error.value.code == 2 and f"usage: nextquill {command}" in err, err
            assert message in err, err
    nextquill(["prompts", str(recipes["amazon"]), "--limit", "1", "--", "--sequence_len", "600"])


def test_yaml_merge_keys_are_read_as_yaml_reads_them_and_not_taken_for_a_key_written_twice():
    """`<<: *defaults` stopped every command with "could not determine a constructor for the tag
    ...merge"; Axolotl reads such recipes. Keys written beside the merge override it, as in YAML;
    a key written twice beside it is still refused."""
    import yaml

    from nextquill_common.recipe_yaml import UniqueKeyLoader

    text = "defaults: &d\n  seed: 1\n  lr: 2\nrun:\n  <<: *d\n  seed: 3\n"
    assert yaml.load(text, Loader=UniqueKeyLoader) == yaml.safe_load(text)
    assert yaml.safe_load(text)["run"] == {"seed": 3, "lr": 2}
    with pytest.raises(yaml.YAMLError, match="key 'seed' is written twice"):
        yaml.load(text + "  seed: 4\n", Loader=UniqueKeyLoader)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- base_model: m\n- nextquill: true\n", "is a YAML list, not a mapping"),
        ("base_model: m\nseed: 1\nseed: 2\n", "key 'seed' is written twice (lines 2 and 3)"),
    ],
)
def test_a_recipe_file_that_is_a_list_or_writes_a_key_twice_is_refused(tmp_path, text, message):
    from nextquill_plugin.cli import main as nextquill

    recipe = tmp_path / "r.yml"
    recipe.write_text(text)
    for command in ("evaluate", "prompts", "inspect"):
        with pytest.raises(SystemExit) as error:
            nextquill([command, str(recipe)])
        assert (
            error.value.code != 0
            and message in str(error.value)
            and str(recipe) in str(error.value)
        )


def test_rows_of_a_data_file_that_changed_since_they_were_prepared_are_refused(
    tiny_tokenizer, synthetic_splits, tmp_path
):
    import os

    from datasets import Dataset

    from dataset_formats.amazon_reviews import load
    from dataset_formats.checks import check_data_sources
    from nextquill_common.jsonl import write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", synthetic_splits["train"][:3])
    recipe = {"plugins": ["nextquill_plugin.NextQuillPlugin"], "nextquill": True}
    strategy = load(tiny_tokenizer, {**recipe, "sequence_len": 512}, {"path": str(data)})
    prepared = Dataset.from_list(
        [strategy.tokenize_prompt(r) for r in synthetic_splits["train"][:3]]
    )

    class Cfg(dict):
        __getattr__ = dict.get

    cfg = Cfg(recipe, dataset_prepared_path="last_run_prepared")
    check_data_sources(cfg, prepared, "train_dataset")  # unchanged: accepted
    # Edited in place: the same size, its modification time put back.
    before, text = os.stat(data), data.read_text()
    data.write_text(text.replace("looks great", "looks grand", 1))
    assert data.stat().st_size == before.st_size and text != data.read_text()
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(ValueError, match="train.jsonl has changed since its rows were prepared"):
        check_data_sources(cfg, prepared, "train_dataset")
    write_jsonl(data, synthetic_splits["train"][3:7])  # rebuilt, as `nextquill-data build` does
    with pytest.raises(ValueError, match="train.jsonl has changed since its rows were prepared"):
        check_data_sources(cfg, prepared, "train_dataset")
    # A symlink re-pointed at another file: its rows were prepared from the first one.
    link, first, second = tmp_path / "link.jsonl", tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_jsonl(first, synthetic_splits["train"][:3])
    write_jsonl(second, synthetic_splits["train"][3:6])
    link.symlink_to(first)
    linked = load(tiny_tokenizer, {**recipe, "sequence_len": 512}, {"path": str(link)})
    rows = Dataset.from_list([linked.tokenize_prompt(r) for r in synthetic_splits["train"][:3]])
    check_data_sources(cfg, rows, "train_dataset")
    link.unlink()
    link.symlink_to(second)
    with pytest.raises(ValueError, match="link.jsonl has changed since its rows were prepared"):
        check_data_sources(cfg, rows, "train_dataset")
    os.remove(data)  # moved away: the prepared rows are all there is; accepted
    check_data_sources(cfg, prepared, "train_dataset")


@pytest.mark.slow
def test_axolotl_train_names_dropped_keys_keys_without_effect_and_refuses_a_key_written_twice(
    tmp_path, tiny_model_dir, synthetic_splits
):
    """Through `axolotl train`: a misspelled Axolotl key (which Axolotl drops), NextQuill keys
    under nextquill: false (which change nothing) are named, and a key written twice (YAML
    keeps the last) stops the run naming the key and both lines, before the model loads.

    What a refusal looks like, as the README says: its message without a stack trace of ours,
    the last line under `--launcher python`; under the default launcher followed only by
    accelerate's trace of the failed process; a plugin key typed on the command line stops
    accelerate itself (exit 2)."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from nextquill_common.jsonl import write_jsonl
    from nextquill_common.offline import offline_env
    from nextquill_plugin.demo.local_runs import tiny_recipe

    write_jsonl(tmp_path / "train.jsonl", synthetic_splits["train"][:2])
    recipe = tiny_recipe(tiny_model_dir, tmp_path / "train.jsonl", tmp_path, nextquill=False)
    recipe.update(sequnce_len=256, nextquill_alpha=0.5)
    text = yaml.safe_dump(recipe, sort_keys=False)
    path = tmp_path / "recipe.yml"

    def train(recipe_text: str, *arguments: str) -> subprocess.CompletedProcess:
        path.write_text(recipe_text)
        axolotl = Path(sys.executable).parent / "axolotl"
        return subprocess.run(
            [str(axolotl), "train", str(path), *arguments],
            cwd=tmp_path,
            env=offline_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    twice = train(text + "learning_rate: 0.5\n")
    output = twice.stdout + twice.stderr
    assert twice.returncode != 0
    assert "sequnce_len (did you mean sequence_len?)" in output
    assert "these keys have no effect in this run: nextquill_alpha" in output
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines, 1) if line.startswith("learning_rate:"))
    refusal = f"key 'learning_rate' is written twice (lines {first} and {len(lines) + 1})"
    assert refusal in output
    assert "Loading model" not in output
    before_the_first_trace, first_trace = twice.stderr.split("Traceback", 1)
    assert refusal in before_the_first_trace  # and the one trace is accelerate's
    assert "CalledProcessError" in first_trace and "Traceback" not in first_trace

    misspelled_type = text.replace("dataset_formats.amazon_reviews", "dataset_formats.amazon_rev")
    alone = train(misspelled_type, "--launcher", "python")
    assert alone.returncode == 1 and "Traceback" not in alone.stderr
    assert (
        alone.stderr.strip()
        .splitlines()[-1]
        .startswith("NextQuill: dataset type `dataset_formats.amazon_rev` cannot be imported")
    )

    (tmp_path / "a_file").write_text("mine\n")  # Axolotl's FileExistsError trace
    file_out = train(
        text.replace(f"output_dir: {tmp_path}/out", f"output_dir: {tmp_path}/a_file"),
        "--launcher",
        "python",
    )
    assert file_out.returncode == 1 and "Traceback" not in file_out.stderr
    assert (
        file_out.stderr.strip().splitlines()[-1]
        == f"NextQuill: output_dir {tmp_path}/a_file is a file; give a folder"
    )

    typed = train(text, "--nextquill_alpha", "0.2")
    assert typed.returncode == 2
    assert typed.stderr.strip().endswith("unrecognized arguments: --nextquill_alpha")


def test_a_base_model_folder_that_does_not_exist_is_named(recipes, tmp_path, load_recipe):
    """It ended in huggingface_hub's "Repo id must be in the form 'repo_name'..."."""
    from nextquill_plugin.cli import main as nextquill

    recipe = tmp_path / "r.yml"
    recipe.write_text(recipes["amazon"].read_text() + "\n")
    text = recipe.read_text()
    recipe.write_text(
        "\n".join(
            "base_model: /nowhere/models/qwen" if line.startswith("base_model:") else line
            for line in text.splitlines()
        )
    )
    for command in ("evaluate", "prompts", "inspect"):
        with pytest.raises(SystemExit, match="base_model /nowhere/models/qwen: no such folder"):
            nextquill([command, str(recipe)])
    with pytest.raises(FileNotFoundError, match="base_model ./models/missing: no such folder"):
        load_recipe(base_model="./models/missing")


def test_a_deepspeed_config_that_does_not_exist_is_named_before_the_model_loads(
    load_recipe, tmp_path, monkeypatch
):
    """The shipped recipes name Axolotl's stock configs; without `axolotl fetch
    deepspeed_configs`, Axolotl kept the name and failed after loading the model (on CPU it
    compiled DeepSpeed's CPU operators first, silently)."""
    monkeypatch.chdir(tmp_path)  # the name is relative to where axolotl runs
    with pytest.raises(FileNotFoundError, match="`axolotl fetch deepspeed_configs` writes"):
        load_recipe(deepspeed="deepspeed_configs/zero1.json")


def test_outputs_inside_the_dataset_folder_are_refused(load_recipe, tmp_path):
    """With the prepared rows inside the dataset folder, every run found them out of date (the
    folder's files, prepared rows included, are the data's identity): the first run too."""
    from nextquill_common.jsonl import write_jsonl

    folder = tmp_path / "data"
    write_jsonl(folder / "train.jsonl", [{"user_id": "u"}])
    dataset = [{"path": str(folder), "ds_type": "json", "type": "dataset_formats.amazon_reviews"}]
    (tmp_path / "link").symlink_to(folder)  # the same folder by another name
    for key in ("dataset_prepared_path", "output_dir", "nextquill_weight_cache_dir"):
        for inside in (folder / "inside", tmp_path / "link" / "inside"):
            with pytest.raises(ValueError, match=f"{key} .* is inside the dataset folder"):
                load_recipe(datasets=dataset, **{key: str(inside)})


def test_a_cut_line_anywhere_in_any_json_lines_file_of_the_recipe_is_named(
    load_recipe, tmp_path, synthetic_splits, build_folder
):
    """Only a NextQuill file's first 1000 rows and last line were read: a line cut further in
    (or in a mixed recipe's alpaca file, or in a gzip file) gave the datasets loader's
    tracebacks and a wrong row number (an adversarial pass found both)."""
    import gzip
    import json

    row = json.dumps(synthetic_splits["train"][0])
    lines = [row] * 1104
    lines[1050] = row[: len(row) // 2]
    long_file = tmp_path / "long.jsonl"
    long_file.write_text("\n".join(lines) + "\n")
    ours = {"ds_type": "json", "type": "dataset_formats.amazon_reviews"}
    with pytest.raises(ValueError, match=r"long.jsonl:1051 is not a JSON object"):
        load_recipe(datasets=[{"path": str(long_file), **ours}])

    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text('{"instruction": "a", "output": "b"}\n' * 6 + '{"instruction": "x", "inp')
    train = tmp_path / "train.jsonl"  # the one load_recipe writes
    mixed = [
        {"path": str(alpaca), "ds_type": "json", "type": "alpaca"},
        {"path": str(train), **ours},
    ]
    with pytest.raises(ValueError, match=r"alpaca.jsonl:7 is not a JSON object"):
        load_recipe(datasets=mixed)

    zipped = tmp_path / "rows.jsonl.gz"
    zipped.write_bytes(gzip.compress((row + "\n").encode() * 50)[:-40])
    with pytest.raises(ValueError, match=r"rows.jsonl.gz is not a complete gzip file"):
        load_recipe(datasets=[{"path": str(zipped), **ours}])

    # a build folder: its splits are checked, not its stats.json (which is no data)
    load_recipe(datasets=[{"path": str(build_folder), **ours}])
    # a save_to_disk folder (Axolotl's load_from_disk): its state.json is metadata, not data
    from datasets import Dataset

    Dataset.from_list(synthetic_splits["train"][:2]).save_to_disk(tmp_path / "saved")
    load_recipe(datasets=[{"path": str(tmp_path / "saved"), **ours}])

    document = tmp_path / "document.json"  # a stock type's JSON document is its loader's to read
    document.write_text('{\n  "data": [{"instruction": "a", "output": "b"}]\n}\n')
    load_recipe(datasets=[{"path": str(document), "ds_type": "json", "type": "alpaca"}])


def test_a_refused_key_reads_as_our_message_not_pydantics_report(recipes):
    """`nextquill weights` printed "1 validation error for AxolotlConfigWCapabilities ...
    input_value={...the whole recipe...}" around the refusal (found by an adversarial pass)."""
    from nextquill_plugin.cli import main as nextquill

    with pytest.raises(SystemExit) as error:
        nextquill(["weights", str(recipes["amazon"]), "--", "--nextquill_include_history", "off"])
    message = str(error.value.code)
    assert message.startswith("nextquill weights: NextQuill"), message
    assert "nextquill_include_history: false" in message and "validation error" not in message
