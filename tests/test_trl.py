"""The TRL path (``nextquill_plugin.trl``): its config derives NextQuill's keys and refuses what it
cannot honour; it trains what the Axolotl path trains, loss for loss; 2 processes equal 1; a
TRL-style YAML config runs end to end and `nextquill evaluate` reads what it trained.

Runs start from the shipped theta_0 (it reads the history, so some target tokens get lambda and
the weights matter) and compare full-precision TensorBoard scalars, which both frameworks write.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from nextquill_common.jsonl import write_jsonl
from nextquill_plugin.config_keys import NextQuillArgs, settings_from
from nextquill_plugin.demo.local_runs import (
    FULL_FINETUNE,
    IN_ONE_PROCESS,
    offline_env,
    tiny_recipe,
)
from nextquill_plugin.demo.theta0 import PROMPT, THETA0_DIR
from nextquill_plugin.objective import NEXTQUILL_METRICS

from .axolotl_runs import run_axolotl
from .torchrun_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
STEPS = 3
VARIANTS = {  # the three objectives the issue names, and the baseline, by their recipe keys
    "NextQuill": {},
    "CausalOnly": {"nextquill_token_weighting": False},
    "NormOnly": {"nextquill_causal_loss": False},
    "ContextSFT": {"nextquill": False},  # each framework's own loss, on the same prompts
}


def trl_config(**overrides):
    from nextquill_plugin.trl import NextQuillSFTConfig

    return NextQuillSFTConfig(
        **{"output_dir": "unused", "use_cpu": True, "bf16": False, **overrides}
    )


def test_the_config_derives_every_recipe_key_with_its_default():
    from nextquill_plugin.trl import NextQuillSFTConfig

    declared = {f.name: f for f in fields(NextQuillSFTConfig) if f.name.startswith("nextquill")}
    assert set(declared) == {*NextQuillArgs.model_fields, "nextquill_dataset_type"}
    config = trl_config()
    for name, info in NextQuillArgs.model_fields.items():
        expected = True if name == "nextquill" else info.default  # TRL: the trainer is NextQuill's
        assert getattr(config, name) == expected, name
        if name in ("nextquill_alpha", "nextquill_delta", "nextquill_high_weight"):
            symbol = {"nextquill_alpha": "alpha", "nextquill_delta": "delta"}.get(name, "lambda")
            assert declared[name].metadata["help"].startswith(symbol), name
    assert settings_from(config).alpha == 0.05
    assert config.prompt_settings().sequence_len == config.max_length
    assert config.dataset_kwargs == {"skip_prepare_dataset": True}  # the trainer tokenizes
    assert config.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nextquill_alpha": "0.05"}, "nextquill_alpha: Input should be a valid number"),
        ({"nextquill_alpha": -1.0}, r"nextquill_alpha must be >= 0 \(got -1"),
        ({"nextquill_low_weight": 0.95}, "must not exceed nextquill_high_weight"),
        ({"nextquill_history_k": 0}, "nextquill_history_k"),
        ({"packing": True}, "packing: True cannot be combined with NextQuill"),
        ({"padding_free": True}, "padding_free"),
        ({"loss_type": "dft"}, "loss_type: 'dft' is not NextQuill's loss"),
        ({"max_length": None}, "max_length: None"),
        ({"nextquill_dataset_type": "json"}, "nextquill_dataset_type: 'json' is none of"),
        ({"gradient_checkpointing_kwargs": {"use_reentrant": True}}, "use_reentrant: true"),
        # trained with the model's template and end token, saved with these (adversarial pass)
        ({"chat_template_path": "t.jinja"}, "chat_template_path: 't.jinja' is not applied"),
        ({"eos_token": "<|im_end|>"}, r"eos_token: '<\|im_end\|>' is not applied"),
    ],
)
def test_the_config_refuses_what_nextquill_cannot_honour(overrides, message):
    with pytest.raises(ValueError, match=message):
        trl_config(**overrides)


def test_the_trainer_refuses_a_plain_sft_config_and_its_own_collator(tiny_model_dir):
    from trl import SFTConfig

    from nextquill_plugin.trl import NextQuillSFTTrainer

    plain = SFTConfig(output_dir="unused", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="needs args=NextQuillSFTConfig"):
        NextQuillSFTTrainer(model=str(tiny_model_dir), args=plain, train_dataset=[{}])
    with pytest.raises(ValueError, match="collates its own batches"):
        NextQuillSFTTrainer(
            model=str(tiny_model_dir), args=trl_config(), train_dataset=[{}], data_collator=list
        )


def test_peft_under_zero3_with_checkpointing_is_recognised():
    """TRL forces reentrant checkpointing for PEFT under ZeRO-3; the trainer refuses that."""
    from types import SimpleNamespace

    from nextquill_plugin.trl.trainer import reentrant_under_zero3

    zero = SimpleNamespace(zero_stage=3)
    args = SimpleNamespace(deepspeed_plugin=zero, gradient_checkpointing=True)
    assert reentrant_under_zero3(args, peft_config=object())
    assert not reentrant_under_zero3(args, peft_config=None)
    assert not reentrant_under_zero3(
        SimpleNamespace(**{**vars(args), "gradient_checkpointing": False}), object()
    )
    assert not reentrant_under_zero3(
        SimpleNamespace(
            deepspeed_plugin=SimpleNamespace(zero_stage=2), gradient_checkpointing=True
        ),
        object(),
    )


def test_rows_of_another_type_are_refused_naming_the_type(tiny_model_dir, synthetic_splits):
    from nextquill_plugin.trl import NextQuillSFTTrainer

    config = trl_config(nextquill_dataset_type="dataset_formats.paired")
    with pytest.raises(
        ValueError, match="none of the 2 train rows is a valid dataset_formats.paired"
    ):
        NextQuillSFTTrainer(
            model=str(tiny_model_dir), args=config, train_dataset=synthetic_splits["train"][:2]
        )


def test_the_command_prints_its_help(capsys):
    """`nextquill trl-sft --help` printed "give --config FILE" instead of its help."""
    from nextquill_plugin.cli import main

    with pytest.raises(SystemExit) as done:
        main(["trl-sft", "--help"])
    assert done.value.code == 0 and "--nextquill_alpha" in capsys.readouterr().out


def test_a_bad_config_file_is_refused_by_the_command_in_one_line(tmp_path, capsys):
    from nextquill_plugin.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("model_name_or_path: nowhere\nnextquill_alpha: -1\noutput_dir: out\n")
    with pytest.raises(SystemExit, match=r"nextquill trl-sft: NextQuillSFTConfig: nextquill_alpha"):
        main(["trl-sft", "--config", str(config), "--use_cpu", "true", "--bf16", "false"])
    config.write_text("model_name_or_path: nowhere\noutput_dir: out\neos_token: <|im_end|>\n")
    with pytest.raises(SystemExit, match=r"eos_token: '<\|im_end\|>' is not applied"):
        main(["trl-sft", "--config", str(config), "--use_cpu", "true", "--bf16", "false"])
    config.write_text("")
    with pytest.raises(SystemExit, match=r"nextquill trl-sft: config .*config.yaml is empty"):
        main(["trl-sft", "--config", str(config)])
    with pytest.raises(SystemExit, match=r"config .* is a folder, not a file"):
        main(["trl-sft", "--config", str(tmp_path)])
    config.write_text("model_name_or_path: nowhere\nnextquil_alpha: 0.1\noutput_dir: out\n")
    for given in (["--config", str(config)], [f"--config={config}"]):  # `=`: never read
        with pytest.raises(
            SystemExit, match=r"unknown keys: nextquil_alpha \(did you mean nextquill_alpha"
        ):
            main(["trl-sft", *given, "--use_cpu", "true", "--bf16", "false"])
    config.write_text("model_name_or_path: m\nnextquill_alpha: 0.5\nnextquill_alpha: 0.01\n")
    with pytest.raises(SystemExit, match=r"key 'nextquill_alpha' is written twice \(lines 2 and 3"):
        main(["trl-sft", "--config", str(config)])  # TRL trained with the last value


def test_evaluation_reads_a_trl_config_as_the_recipe_it_amounts_to():
    from nextquill_plugin.evaluation.recipe_data import read_recipe

    recipe = read_recipe(ROOT / "recipes" / "trl" / "books_nextquill.yaml")
    assert recipe["base_model"] == "Qwen/Qwen2.5-3B"
    assert recipe["sequence_len"] == 4096 and recipe["nextquill"] is True
    assert recipe["datasets"] == [
        {"path": "data/books/train.jsonl", "type": "dataset_formats.amazon_reviews"}
    ]
    assert recipe["nextquill_alpha"] == 0.05 and recipe["nextquill_history_k"] == 8
    baseline = read_recipe(ROOT / "recipes" / "trl" / "books_context_sft.yaml")
    assert baseline["nextquill"] is False
    from nextquill_plugin.trl.recipe_view import recipe_view

    # without max_length, the budget is TRL's default, as the trainer would use it
    assert recipe_view({"model_name_or_path": "m"})["sequence_len"] == trl_config().max_length


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes" / "trl").glob("*.yaml")))
def test_every_trl_config_parses_with_trls_parser(name):
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from nextquill_plugin.trl import NextQuillSFTConfig

    parser = TrlParser((ScriptArguments, NextQuillSFTConfig, ModelConfig, DatasetMixtureConfig))
    path = ROOT / "recipes" / "trl" / name
    # bf16 is the configs' GPU setting; this machine has none
    script, training, model, _ = parser.parse_args_and_config(
        ["--config", str(path), "--bf16", "false", "--use_cpu", "true"]
    )
    assert model.use_peft and model.lora_r == 8 and training.max_length == 4096
    assert training.learning_rate == 5e-6 and training.nextquill == ("nextquill" in name)
    assert script.dataset_name.startswith("data/")


def test_plain_trl_sft_on_a_shipped_config_stops_at_a_key_naming_nextquill_trl_sft(tmp_path):
    """What a TRL user types first: `trl sft --config` on our config. TRL's parser hands the keys
    it does not know to accelerate, which stops at the first one; that key names our command."""
    config = yaml.safe_load((ROOT / "recipes" / "trl" / "books_nextquill.yaml").read_text())
    config.update(dtype="float32", bf16=False, use_cpu=True)  # this machine has no GPU
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "trl"), "sft", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=offline_env(),
        cwd=tmp_path,
    )
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.endswith("unrecognized arguments: --use_nextquill_trl_sft"), last_line
    assert not (tmp_path / "outputs").exists()


def test_the_marker_key_cannot_be_turned_off():
    with pytest.raises(ValueError, match="use_nextquill_trl_sft: it only marks"):
        trl_config(use_nextquill_trl_sft=False)


# --- training runs ---------------------------------------------------------------------------


def scalars(folder: Path) -> dict[str, np.ndarray]:
    """The training scalars a run wrote to TensorBoard, by name (without ``train/``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = {p.parent for p in folder.rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {
        tag.removeprefix("train/"): np.array([s.value for s in accumulator.Scalars(tag)])
        for tag in accumulator.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def train_file(tmp_path_factory, synthetic_splits):
    folder = tmp_path_factory.mktemp("trl_rows")
    write_jsonl(folder / "test.jsonl", synthetic_splits["test"][:4])
    return write_jsonl(folder / "train.jsonl", synthetic_splits["train"][:12])


def write_trl_config(workdir: Path, train_file: Path, **overrides) -> Path:
    """A TRL-style config: full fine-tuning of the shipped theta_0, 3 steps of 4 rows
    (``overrides`` replace or add keys; None removes one)."""
    config = {
        "model_name_or_path": str(THETA0_DIR),
        "datasets": [{"path": "json", "data_files": str(train_file), "split": "train"}],
        "output_dir": str(workdir / "out"),
        "max_steps": STEPS,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.001,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "tensorboard",
        "max_length": PROMPT["sequence_len"],
        "nextquill_history_k": PROMPT["nextquill_history_k"],
        "seed": 7,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "bf16": False,
        "dtype": "float32",
        **overrides,
    }
    config = {key: value for key, value in config.items() if value is not None}
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_command(args: list[str], cwd: Path) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def trl_sft(config: Path, processes: int = 1, cwd: Path | None = None) -> str:
    command = [str(Path(sys.executable).parent / "nextquill"), "trl-sft", "--config", str(config)]
    if processes > 1:  # torchrun starts them; accelerate (TRL's) joins them with gloo on CPU
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        command += [f"--master_port={free_port()}", "-m", "nextquill_plugin.cli", "trl-sft"]
        command += ["--config", str(config)]
    return run_command(command, cwd or config.parent)


def test_a_cut_data_file_and_a_row_too_long_for_max_length_are_named(
    tmp_path, train_file, build_folder, capsys
):
    """A cut-off data file gave three datasets tracebacks; a row whose prompt cannot fit was
    reported as `sequence_len=...` (Axolotl's key, not TRL's) without naming the row."""
    from nextquill_plugin.cli import main

    lines = train_file.read_text().splitlines()
    cut = tmp_path / "cut" / "train.jsonl"
    cut.parent.mkdir()
    cut.write_text("\n".join(lines) + "\n" + lines[0][:300])
    for config in (
        write_trl_config(tmp_path / "file", cut),
        write_trl_config(tmp_path / "folder", cut, datasets=None, dataset_name=str(cut.parent)),
    ):
        with pytest.raises(SystemExit) as error:
            main(["trl-sft", "--config", str(config)])
        message = str(error.value.code) + capsys.readouterr().err
        assert f"{cut}:{len(lines) + 1} is not a JSON object" in message

    # a build folder read by its dataset card (its stats.json is no data): the rows are read
    too_short = {"datasets": None, "dataset_name": str(build_folder), "max_length": 60}
    with pytest.raises(SystemExit) as error:
        main(["trl-sft", "--config", str(write_trl_config(tmp_path, train_file, **too_short))])
    message = str(error.value.code) + capsys.readouterr().err
    assert "max_length=60 cannot hold even the prompt without history" in message
    assert "row user_id=" in message and "raise max_length" in message
    assert "sequence_len" not in message


@pytest.mark.slow  # not e2e: the axolotl 0.21 lane tests the plugin, not TRL
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trl_logs_the_losses_the_axolotl_path_logs(tmp_path, train_file, variant):
    """Same rows, model, seed and optimiser: the same loss at every step (1e-5), and the same
    NextQuill parts (Axolotl stores its metrics rounded to 5 decimals).

    ContextSFT is each framework's own loss, compared without accumulation: for a Qwen2 model
    Axolotl averages the micro-batches' mean losses (it turns model_accepts_loss_kwargs off),
    TRL divides by the window's tokens, so with accumulation the two baselines differ slightly
    (2e-5 relative here); NextQuill divides by the window's tokens under both."""
    pytest.importorskip("axolotl")  # skipped in the TRL-only lane (.ci/lane_trl_only)
    keys = VARIANTS[variant]
    shape = {"micro_batch_size": 2, "gradient_accumulation_steps": 2}
    if variant == "ContextSFT":
        shape = {"micro_batch_size": 4, "gradient_accumulation_steps": 1}
    recipe = tiny_recipe(
        THETA0_DIR,
        train_file,
        tmp_path,
        **{
            **FULL_FINETUNE,
            **PROMPT,
            **keys,
            **shape,
            "max_steps": STEPS,
            "learning_rate": 0.001,
            "use_tensorboard": True,
            "shuffle_merged_datasets": False,  # Axolotl would reorder rows before the sampler
            # Axolotl's default prepared path, in the folder both frameworks run in: the TRL
            # run finds the theta_0 effects the Axolotl run cached there
            "dataset_prepared_path": None,
        },
    )
    result = run_axolotl("train", recipe, tmp_path, **IN_ONE_PROCESS)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    trl_shape = {
        "per_device_train_batch_size": shape["micro_batch_size"],
        "gradient_accumulation_steps": shape["gradient_accumulation_steps"],
    }
    trl_log = trl_sft(
        write_trl_config(tmp_path / "trl", train_file, **keys, **trl_shape), cwd=tmp_path
    )
    if variant in ("NextQuill", "NormOnly"):  # weights from theta_0 (CausalOnly's are all 1)
        cached = list((tmp_path / "last_run_prepared" / "nextquill").glob("effects-*.npz"))
        assert len(cached) == 1 and "used cached theta_0 effects" in trl_log, trl_log[-3000:]
    axolotl, trl = scalars(tmp_path / "out"), scalars(tmp_path / "trl" / "out")
    assert len(trl["loss"]) == STEPS
    np.testing.assert_allclose(trl["loss"], axolotl["loss"], atol=1e-5)
    if variant == "ContextSFT":
        assert not set(NEXTQUILL_METRICS) & set(trl)  # no NextQuill loss ran
        return
    for name in NEXTQUILL_METRICS:
        np.testing.assert_allclose(trl[name], axolotl[name], atol=2e-5, err_msg=name)
    if variant == "NextQuill":  # the weights matter: theta_0 gives some target tokens lambda
        assert trl["nextquill/preference_token_fraction"].min() > 0
    if variant == "NormOnly":
        assert np.all(trl["nextquill/causal_loss"] == 0)


@pytest.mark.distributed
def test_two_processes_train_as_one_with_the_same_rows_per_step(tmp_path, train_file):
    """2 processes x micro-batch 2 against 1 process x micro-batch 2 x accumulation 2: TRL
    divides by the target tokens of all processes, so the steps are the same (SGD keeps float
    differences of the reduction order at rounding size). torchrun starts the processes and
    accelerate joins them with gloo (`accelerate launch` starts CPU processes only via mpirun)."""
    sgd = {"optim": "sgd", "learning_rate": 0.1}
    one = write_trl_config(tmp_path / "one", train_file, **sgd)
    two = write_trl_config(tmp_path / "two", train_file, **sgd, gradient_accumulation_steps=1)
    trl_sft(one)
    output = trl_sft(two, processes=2)
    assert "NextQuill: computed theta_0 effects for 12 rows" in output  # the pass, shared
    assert "are preference-bearing (effect > delta=0.05)" in output
    single, double = scalars(tmp_path / "one" / "out"), scalars(tmp_path / "two" / "out")
    for name in ("loss", *NEXTQUILL_METRICS):
        np.testing.assert_allclose(double[name], single[name], atol=1e-5, err_msg=name)
    assert single["nextquill/preference_token_fraction"].min() > 0


@pytest.mark.slow
def test_the_trl_path_trains_lora_without_axolotl_and_evaluate_reads_it(tmp_path, train_file):
    """The Python API of the issue (LoRA through peft_config) in a process where Axolotl and
    DeepSpeed cannot be imported; then `nextquill evaluate` on the YAML config and checkpoint."""
    config = write_trl_config(tmp_path, train_file, report_to="none", gradient_checkpointing=True)
    settings = yaml.safe_load(config.read_text())
    script = f"""
import sys
for name in ("axolotl", "deepspeed"):
    sys.modules[name] = None  # as if not installed
from peft import LoraConfig
from nextquill_plugin.trl import NextQuillSFTConfig, NextQuillSFTTrainer
from nextquill_common.jsonl import read_jsonl
settings = {settings!r}
model, data = settings.pop("model_name_or_path"), settings.pop("datasets")[0]["data_files"]
settings.pop("dtype")
trainer = NextQuillSFTTrainer(
    model=model, args=NextQuillSFTConfig(**settings), train_dataset=read_jsonl(data),
    peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
)
trainer.train()
trainer.save_model(settings["output_dir"])
losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
parts = [log["nextquill/causal_loss"] for log in trainer.state.log_history if "loss" in log]
assert len(losses) == {STEPS} and all(loss > 0 for loss in losses) and all(parts), losses
assert "axolotl" not in {{m.split(".")[0] for m in sys.modules if sys.modules[m] is not None}}
print("TRAINED", losses)
"""
    output = run_command([sys.executable, "-c", script], tmp_path)
    assert "TRAINED" in output
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    nextquill = str(Path(sys.executable).parent / "nextquill")
    evaluate = [nextquill, "evaluate", str(config), "--checkpoint", str(tmp_path / "out")]
    output = run_command([*evaluate, "--limit", "2", "--max-new-tokens", "8"], tmp_path)
    assert "rouge1" in output
    assert list((tmp_path / "out").glob("eval-test*/metrics.json"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give --config FILE"),
        (["--config", "CONFIG", "--dataset_streaming", "true"], "streaming: true is refused"),
        (["--config", "CONFIG", "--streaming", "true"], "streaming: true is refused"),
        (["--config", "CONFIG", "--output_dir", "CONFIG"], "is a file; give a folder"),
        (["--config", "CONFIG", "--dataset_name", "CONFIG"], "is a file; dataset_name names a"),
    ],
)
def test_the_command_refuses_no_config_and_streaming_as_usage_errors(
    tmp_path, capsys, arguments, message
):
    """Without --config TRL's defaults ended in a bf16/GPU error (exit 1); a streaming config
    trained with exit 0 although streaming cannot be honoured. Both are wrong command lines:
    exit 2 with the usage line, before any model loads."""
    from nextquill_plugin.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(
        "model_name_or_path: nowhere\noutput_dir: out\nuse_cpu: true\nbf16: false\n"
        "datasets:\n  - path: json\n    data_files: rows.jsonl\n"
    )
    with pytest.raises(SystemExit) as error:
        main(["trl-sft", *[str(config) if a == "CONFIG" else a for a in arguments]])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "usage: nextquill trl-sft" in err and message in err
