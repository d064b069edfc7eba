"""`nextquill` command line: work done ahead of or after `axolotl train`.

nextquill weights RECIPE.yml [--key value ...]   theta_0 effects into the cache, no training
nextquill evaluate RECIPE.yml [--checkpoint DIR]  generate for a split and score it (Table 1)
nextquill compare RUN_DIR RUN_DIR ...             Table-1/2-style comparison of evaluations
nextquill inspect RECIPE.yml [--checkpoint DIR]   per-token causal effects: HTML, terminal, plots
nextquill setup-wordnet                           WordNet for METEOR from Debian's packages
nextquill prompts RECIPE.yml [--limit N]          the exact prompt text evaluate generates from
nextquill recipes DEST                            copy the shipped recipes into DEST
nextquill demo                                    the end-to-end demo (same as `make demo`)
nextquill trl-sft --config RECIPE.yaml            train under TRL's SFTTrainer (a TRL-style config)

The same commands run as `axolotl nextquill ...`.

Recipe overrides (`--key value`, as `axolotl train` takes them) go after `--` for evaluate and
inspect, e.g. `nextquill evaluate r.yml --checkpoint out -- --sequence_len 2048`.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

from nextquill_common.cli_options import (
    add_dataclass_options,
    dataclass_from_args,
    package_version,
)
from nextquill_common.jsonl import write_text_atomic


def parse_value(text: str) -> Any:
    """A command-line value: booleans, null, numbers, YAML lists/maps; any other text stays text
    (YAML 1.1 alone would turn `--save_strategy no` into False)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    if text.strip().startswith(("[", "{")):
        return yaml.safe_load(text)
    return text


def parse_overrides(extra: list[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs, as `axolotl train` takes them; a key that looks
    like NextQuill's but is none of them is refused, as in a recipe."""
    overrides = _parse_pairs(extra)
    from .config_keys import NextQuillArgs, misspelled_keys

    misspelled = misspelled_keys(overrides, known=set(NextQuillArgs.model_fields))
    if misspelled:
        raise SystemExit("nextquill: " + " ".join(misspelled))
    return overrides


def _parse_pairs(extra: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise SystemExit(
                f"nextquill: unexpected argument {token!r}; overrides look like --key value"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                value = "true"
            else:
                i += 1
                value = extra[i]
        overrides[key] = parse_value(value)
        i += 1
    return overrides


def add_evaluate_parser(commands) -> None:
    from .evaluation.evaluate import EvaluationRequest
    from .evaluation.generation import GenerationSettings

    evaluate = commands.add_parser(
        "evaluate",
        help="generate a review for every row of a split and score ROUGE-1/L, METEOR, BLEU",
        description="Without --checkpoint the recipe's base_model is evaluated as it is "
        "(the paper's untuned row). Writes predictions.jsonl and metrics.json.",
    )
    add_dataclass_options(evaluate, EvaluationRequest)
    add_dataclass_options(evaluate, GenerationSettings)


def add_compare_parser(commands) -> None:
    compare = commands.add_parser("compare", help="compare evaluations (Table 1 / Table 2)")
    compare.add_argument("runs", nargs="+", help="evaluation folders or metrics.json files")
    compare.add_argument("--baseline", help="run name to report relative improvement against")
    compare.add_argument(
        "--format",
        choices=("markdown", "csv"),
        default="markdown",
        help="table format (default: markdown)",
    )
    compare.add_argument("--ci", action="store_true", help="show 95%% confidence intervals")
    compare.add_argument("--csv", help="also write the CSV table to this file")
    compare.add_argument(
        "--resamples",
        type=at_least_one,
        default=1000,
        help="bootstrap resamples of the paired differences from --baseline (default: 1000)",
    )


def at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {value})")
    return value


def add_inspect_parser(commands) -> None:
    from .evaluation.inspection import InspectionRequest

    inspect = commands.add_parser(
        "inspect", help="per-token causal effects and weights: HTML page, terminal, plots"
    )
    add_dataclass_options(inspect, InspectionRequest)


def run_evaluate(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from .evaluation.evaluate import EvaluationRequest, run_evaluation
    from .evaluation.generation import GenerationSettings

    settings = dataclass_from_args(GenerationSettings, args)
    request = dataclass_from_args(EvaluationRequest, args, overrides=overrides)
    try:
        document = run_evaluation(request, settings)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if document is None:  # ranks other than 0 generate only
        return
    metrics = document["metrics"]
    summary = ", ".join(
        f"{key} {value['value']:.4f} [{value['ci_low']:.4f}, {value['ci_high']:.4f}]"
        for key, value in metrics.items()
    )
    print(f"nextquill evaluate: {document['name']}: {document['n']} rows; {summary}")
    print(f"nextquill evaluate: wrote {document['out_dir']}/predictions.jsonl and metrics.json")


def run_compare(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from .evaluation.compare import (
        comparison_table,
        comparison_warnings,
        difference_table,
        load_run,
    )

    if overrides:
        raise ValueError("compare takes no recipe overrides")
    runs = [load_run(path) for path in args.runs]
    for warning in comparison_warnings(runs):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        comparison_table(runs, baseline=args.baseline, fmt=args.format, intervals=args.ci), end=""
    )
    if args.baseline and args.format == "markdown":
        print()
        print(
            difference_table(runs, args.baseline, resamples=args.resamples, show_progress=True),
            end="",
        )
    if args.csv:
        write_text_atomic(
            args.csv, comparison_table(runs, baseline=args.baseline, fmt="csv", intervals=True)
        )


def run_inspect(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from .evaluation.inspection import InspectionRequest, run_inspection

    paths = run_inspection(dataclass_from_args(InspectionRequest, args, overrides=overrides))
    for kind, path in paths.items():
        print(f"nextquill inspect: {kind}: {path}")


def run_setup_wordnet(args: argparse.Namespace, overrides: dict[str, Any]) -> None:

    from .evaluation.wordnet_data import install_wordnet, require_wordnet

    target = install_wordnet(Path(args.source), Path(args.nltk_dir) if args.nltk_dir else None)
    require_wordnet()
    print(f"nextquill setup-wordnet: WordNet 3.0 installed in {target}")


def copy_recipes(destination: Path) -> list[Path]:
    """Copy the recipes shipped with the package into ``destination`` (the TRL-style configs
    into its ``trl/``); when a file of the same name is already there nothing is copied (and
    the error names it)."""
    from importlib.resources import files

    try:  # installed from a wheel: the recipes are the package nextquill_plugin.recipes
        folder = files("nextquill_plugin.recipes")
    except ModuleNotFoundError:  # a source checkout (editable install): the recipes/ folder
        folder = Path(__file__).resolve().parents[1] / "recipes"
    shipped = [
        (Path(entry.name), entry) for entry in folder.iterdir() if entry.name.endswith(".yml")
    ]
    trl = folder / "trl"
    if trl.is_dir():
        shipped += [
            (Path("trl") / entry.name, entry)
            for entry in trl.iterdir()
            if entry.name.endswith(".yaml")
        ]
    shipped.sort(key=lambda pair: str(pair[0]))
    if not shipped:
        raise FileNotFoundError("no recipes are installed with this package")
    existing = [str(name) for name, _ in shipped if (destination / name).exists()]
    if existing:
        raise FileExistsError(
            f"{destination} already has {', '.join(existing)}; nothing was copied. Choose "
            "another folder or move those files away."
        )
    copied = []
    for name, entry in shipped:
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(destination / name, entry.read_text())
        copied.append(destination / name)
    return copied


def run_prompts(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    from .evaluation.prompts import PromptsRequest, render_prompts

    prompts = render_prompts(dataclass_from_args(PromptsRequest, args, overrides=overrides))
    print("\n\n".join(prompts))


def run_recipes(args: argparse.Namespace, overrides: dict[str, Any]) -> None:
    copied = copy_recipes(Path(args.destination))
    print(f"nextquill recipes: copied {len(copied)} recipes into {args.destination}")


COMMANDS = {
    "evaluate": run_evaluate,
    "compare": run_compare,
    "inspect": run_inspect,
    "setup-wordnet": run_setup_wordnet,
    "recipes": run_recipes,
    "prompts": run_prompts,
}


# Messages libraries print on import that mean nothing to our users: (logger, level) pairs and
# warning texts. Silenced in our commands only, before anything imports those libraries.
QUIET_LOGGERS = {
    "torchao": logging.ERROR,  # its CUDA-only kernels, on a machine without them
    "torch.utils._pytree": logging.ERROR,  # a deprecation inside torchao
    "bitsandbytes.backends.cpu.ops": logging.ERROR,  # CPU kernels from the Hub, when offline
}
QUIET_WARNINGS = (
    "Skipping publisher trust check",  # bitsandbytes, in offline mode
    "You are importing from 'trl.experimental'",  # Axolotl's own imports
)


def quiet_library_noise() -> None:
    """Keep the known harmless import-time messages of torchao, torch, bitsandbytes and trl off
    our commands' stderr; every other warning still shows."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for text in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(text))


def build_parser(prog: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and each subcommand's parser (for its own usage in errors)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser(
        "weights", help="compute the theta_0 token weights of a recipe ahead of training"
    )
    weights.add_argument("recipe", help="the recipe whose theta_0 weights to compute")
    commands.add_parser("demo", help="run the end-to-end demo on the tiny local model")
    commands.add_parser(  # parsed by TRL's own parser (main hands its arguments over)
        "trl-sft", help="train a TRL-style YAML config under TRL's SFTTrainer: --config FILE"
    )
    add_evaluate_parser(commands)
    add_compare_parser(commands)
    add_inspect_parser(commands)
    wordnet = commands.add_parser(
        "setup-wordnet", help="copy Debian's WordNet 3.0 (wordnet-base) where NLTK finds it"
    )
    wordnet.add_argument(
        "--source",
        default="/usr/share/wordnet",
        help="where Debian's wordnet-base put WordNet (default: /usr/share/wordnet)",
    )
    wordnet.add_argument(
        "--nltk-dir",
        default=None,
        help="the nltk_data folder to copy it into (default: <sys.prefix>/nltk_data)",
    )
    from .evaluation.prompts import PromptsRequest

    prompts = commands.add_parser(
        "prompts", help="print the exact prompt text `evaluate` generates from (for other tools)"
    )
    add_dataclass_options(prompts, PromptsRequest)
    recipes = commands.add_parser(
        "recipes", help="copy the shipped recipes (every domain and variant, and the mixed example)"
    )
    recipes.add_argument("destination", help="folder to copy them into (created if missing)")
    return parser, commands.choices


def main(argv: list[str] | None = None, prog: str = "nextquill") -> None:
    """The command line. Exit codes: 0 done, 1 a run that failed (a message says why), 2 a
    command line that is wrong (the subcommand's usage says how). Recipe overrides, for the
    commands that read a recipe, go after ``--``: ``nextquill evaluate r.yml -- --sequence_len 2048``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_noise()
    if argv[:1] == ["--version"]:  # without building the parsers, which import torch
        print(f"{prog} {package_version()}")
        return
    if argv[:1] == ["trl-sft"]:  # TRL's parser takes the rest, as `trl sft` would
        from .trl.command import main as trl_main

        try:
            trl_main(argv[1:], prog=f"{prog} trl-sft")
        except (OSError, ValueError, TypeError) as error:  # TypeError: rows of the wrong kind
            raise SystemExit(f"{prog} trl-sft: {error}") from None
        return
    parser, subcommands = build_parser(prog)
    overrides: dict[str, Any] = {}
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], parse_overrides(argv[cut + 1 :])
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = f"; recipe overrides go after --: {prog} {args.command} ... -- {' '.join(extra)}"
        subcommands[args.command].error(
            f"unrecognized arguments: {' '.join(extra)}"
            + (hint if extra[0].startswith("--") else "")
        )
    if args.command == "weights":
        from .axolotl.weights import compute_weights  # on use: it imports Axolotl

        try:
            cache = compute_weights(args.recipe, overrides)
        except (OSError, ValueError) as error:
            raise SystemExit(f"{prog} weights: {error}") from None
        print(f"nextquill: theta_0 effects are cached in {cache}")
    elif args.command in COMMANDS:
        try:
            COMMANDS[args.command](args, overrides)
        except (OSError, ValueError, RuntimeError) as error:
            raise SystemExit(f"{prog} {args.command}: {error}") from None
    elif args.command == "demo":
        from .demo.local_runs import use_offline_mode

        use_offline_mode()  # the demo is local: tiny model, shipped data
        from .demo.run import main as demo_main

        demo_main()


if __name__ == "__main__":
    main(sys.argv[1:])
