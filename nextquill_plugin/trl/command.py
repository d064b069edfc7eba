"""``nextquill trl-sft --config recipe.yaml``: a TRL-style YAML config, trained as ``trl sft`` trains
one (TRL's own parser and dataset loading, so every ScriptArguments, SFTConfig, ModelConfig and
dataset-mixture key works as in TRL), with ``NextQuillSFTConfig``'s keys and trainer.

The command imports TRL when it runs (``nextquill`` dispatches here before building any parser).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any

from datasets import load_dataset
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    TrlParser,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from dataset_formats.sources import files_a_loader_reads, local_data_files
from dataset_formats.strategy import LOG as ROWS_LOG
from nextquill_common.jsonl import check_json_rows_file, input_file_problem
from nextquill_common.recipe_yaml import read_mapping

from ..effects_cache import LOG as EFFECTS_LOG
from .config import NextQuillSFTConfig
from .recipe_view import TRL_MODEL_KEY
from .trainer import NextQuillSFTTrainer


def show_nextquill_messages() -> None:
    """Our INFO messages (where the theta_0 effects came from, how many tokens the rule marks,
    skipped rows) on stderr, as Axolotl shows them in its runs."""
    logging.basicConfig(format="%(message)s")  # the messages say NextQuill themselves
    for logger in (EFFECTS_LOG, ROWS_LOG):
        logger.setLevel(logging.INFO)


def refuse_unknown_config_keys(parser: Any, argv: list[str]) -> None:
    """Name each key of the ``--config`` file that no dataclass of the parser declares, with the
    closest known key (TRL's own error would only list them)."""
    if "--config" not in argv or argv.index("--config") + 1 >= len(argv):
        return
    path = Path(argv[argv.index("--config") + 1])
    problem = input_file_problem(path)
    if problem:
        raise FileNotFoundError(f"config {path} {problem}")
    config = read_mapping(path, "config")  # a key written twice: TRL would keep the last
    if not config:
        raise ValueError(f"config {path} is empty")
    known = {action.dest for action in parser._actions} | {"env"}
    problems = []
    for key in sorted(set(config) - known, key=str):
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.8)
        problems.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    if problems:
        raise ValueError(f"{path}: unknown keys: {'; '.join(problems)}")


def check_local_data_files(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig
) -> None:
    """Every local JSON(L) file the config loads is checked before ``datasets`` reads it: its
    loader stops on an empty file or a cut-off line with tracebacks that name neither."""
    entries = [e if isinstance(e, dict) else vars(e) for e in dataset_args.datasets or []]
    for entry in entries or [{"path": script_args.dataset_name}]:
        for path in local_data_files(entry):
            for file in files_a_loader_reads(path) if path.exists() else []:
                check_json_rows_file(file)


def main(argv: list[str], prog: str = "nextquill trl-sft") -> None:
    """Parse the config and the command line as ``trl sft`` does, then train and save."""
    show_nextquill_messages()
    # TRL finds its config only as `--config FILE`; `--config=FILE` was never read
    argv = [p for a in argv for p in (a.split("=", 1) if a.startswith("--config=") else [a])]
    parser = TrlParser(
        (ScriptArguments, NextQuillSFTConfig, ModelConfig, DatasetMixtureConfig), prog=prog
    )
    given = {arg.split("=")[0] for arg in argv}
    if not {"--config", f"--{TRL_MODEL_KEY}", "-h", "--help"} & given:
        # Without either, TRL's defaults (bf16 on) fail far from the cause.
        parser.error(
            f"give --config FILE (a TRL-style YAML config, see recipes/trl/) or --{TRL_MODEL_KEY}"
        )
    refuse_unknown_config_keys(parser, argv)
    # Unknown keys are refused (trl sft only warns): a misspelled key would train without it.
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        argv, fail_with_unknown_args=True
    )
    if not model_args.model_name_or_path:
        parser.error(f"the config names no model; set {TRL_MODEL_KEY}")
    if Path(training_args.output_dir).exists() and not Path(training_args.output_dir).is_dir():
        parser.error(f"output_dir {training_args.output_dir} is a file; give a folder")
    if script_args.dataset_streaming or dataset_args.streaming:
        parser.error(
            "dataset_streaming / streaming: true is refused: NextQuill tokenizes the rows and "
            "computes their theta_0 effects before training, which a stream cannot give; set it "
            "to false"
        )
    training_args.model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if script_args.dataset_name and Path(script_args.dataset_name).is_file():
        parser.error(  # datasets' loader says it finds no data file there
            f"dataset_name {script_args.dataset_name} is a file; dataset_name names a folder or "
            "a Hub dataset; for one file write datasets: [{path: json, data_files: FILE}]"
        )
    check_local_data_files(script_args, dataset_args)
    if dataset_args.datasets:
        dataset = get_dataset(dataset_args)
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    else:
        parser.error("the config names no data; set datasets (or dataset_name)")
    for split in (script_args.dataset_train_split, script_args.dataset_test_split):
        if split == script_args.dataset_test_split and training_args.eval_strategy == "no":
            continue
        if split not in dataset:
            raise ValueError(f"the data has no split {split!r}; it has {sorted(dataset)}")
    trainer = NextQuillSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split]
        if training_args.eval_strategy != "no"
        else None,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"NextQuill: model saved to {training_args.output_dir}")
