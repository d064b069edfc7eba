"""`nextquill` command line: work done ahead of or after `axolotl train`.

nextquill weights RECIPE.yml [-- --key value ...] theta_0 effects into the cache, no training
nextquill evaluate RECIPE.yml [--checkpoint DIR]  generate for a split and score it (Table 1)
nextquill compare RUN_DIR RUN_DIR ...             Table-1/2-style comparison of evaluations
nextquill inspect RECIPE.yml [--checkpoint DIR]   per-token causal effects: HTML, terminal, plots
nextquill setup-wordnet                           WordNet for METEOR (Debian's, else NLTK's download)
nextquill prompts RECIPE.yml [--limit N]          the exact prompt text evaluate generates from
nextquill recipes DEST                            copy the shipped recipes into DEST
nextquill demo                                    the end-to-end demo (same as `make demo`)
nextquill trl-sft --config RECIPE.yaml            train under TRL's SFTTrainer (a TRL-style config)

The same commands run as `axolotl nextquill ...`.

Recipe overrides (`--key value`, as `axolotl train` takes them) go after `--` for the commands
that read a recipe, e.g. `nextquill evaluate r.yml --checkpoint out -- --sequence_len 2048`.

Every subcommand is one row of ``SUBCOMMANDS``: its help, the dataclasses whose fields are its
options (``nextquill_common.cli_options``), and the function that runs it. The modules that do
the work are imported when their subcommand runs, so that `nextquill --version` imports no torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from nextquill_common.cli_options import (
    UsageError,
    add_dataclass_options,
    argument,
    at_least_one,
    dataclass_from_args,
    interrupted,
    option,
    output_file,
    output_folder,
    package_version,
)
from nextquill_common.jsonl import write_text_atomic
from nextquill_common.quiet import quiet_library_noise
from nextquill_common.refusals import refusal_message


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
    """``--key value`` / ``--key=value`` pairs, as `axolotl train` takes them; a key that
    neither Axolotl's schema nor NextQuill's declares is refused with the closest known key (a
    misspelled key would be applied to nothing), and so is a value its key's type refuses, or a
    key without a value that is not a yes/no key. Without Axolotl installed, NextQuill's keys
    are checked. Raises ValueError, a wrong command line."""
    from .config_keys import NextQuillArgs, misspelled_keys  # on use: pydantic schemas

    texts = raw_pairs(extra)
    types = {key: info.annotation for key, info in NextQuillArgs.model_fields.items()}
    try:
        from .axolotl.args import schema_types, unknown_keys  # on use: the schema
    except ModuleNotFoundError:  # the TRL path alone: no Axolotl schema to check against
        problems = misspelled_keys(texts, known=set(types))
    else:
        problems = [
            f"unknown key {key}" + (f": did you mean {close}?" if close else "")
            for key, close in unknown_keys(texts)
        ]
        types = {**schema_types(), **types}
    overrides = {}
    for key, text in texts.items():
        try:
            overrides[key] = typed_value(key, text, types.get(key))
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("recipe overrides: " + "; ".join(problems))
    return overrides


def typed_value(key: str, text: str | None, annotation: Any) -> Any:
    """An override's value as its key's type takes it: the text read as YAML would read it,
    else the text itself (a system prompt that is a number); a key given without a value is
    true, for a yes/no key only. ValueError says why not."""
    from pydantic import TypeAdapter, ValidationError  # on use, as the schemas

    try:
        adapter = TypeAdapter(annotation) if annotation is not None else None
    except Exception:  # noqa: BLE001 - a type pydantic cannot check alone is left to the load
        adapter = None
    if text is None:
        if adapter is None:
            return True
        try:
            return adapter.validate_python(True, strict=True)
        except ValidationError:
            raise ValueError(f"--{key} needs a value") from None
    value = parse_value(text)
    if adapter is None:
        return value
    try:
        adapter.validate_python(value)
        return value
    except ValidationError as error:
        try:
            adapter.validate_python(text)
            return text
        except ValidationError:
            raise ValueError(f"{key}: {text!r} is not valid ({error.errors()[0]['msg']})") from None


def raw_pairs(extra: list[str]) -> dict[str, str | None]:
    """The text of each ``--key value`` / ``--key=value`` pair (None: ``--key`` alone)."""
    pairs: dict[str, str | None] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if token == "--":
            raise ValueError("a second -- among the overrides; write -- once, before them")
        if not token.startswith("--"):
            raise ValueError(
                f"unexpected argument {token!r} after --; overrides look like --key value"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                value = None
            else:
                i += 1
                value = extra[i]
        pairs[key] = value
        i += 1
    return pairs


def parse_pairs(extra: list[str]) -> dict[str, Any]:
    """The pairs with their values read as YAML would read them (``--key`` alone: true),
    unchecked."""
    return {
        key: True if text is None else parse_value(text) for key, text in raw_pairs(extra).items()
    }


# --- the requests of the subcommands whose work is not in evaluation/ ----------------------------


@dataclass
class WeightsRequest:
    """`nextquill weights`: which recipe's theta_0 effects to compute."""

    recipe: str = argument("the recipe whose theta_0 weights to compute")
    overrides: dict[str, Any] | None = field(default=None, metadata={"cli": False})


@dataclass
class CompareRequest:
    """`nextquill compare`: which evaluations, against which baseline, in which format."""

    runs: list[str] = argument("evaluation folders or metrics.json files", nargs="+")
    baseline: str | None = option("run name to report relative improvement against")
    format: str = option("table format", default="markdown", choices=("markdown", "csv"))
    ci: bool = option("show 95% confidence intervals", default=False)
    csv: str | None = option("also write the CSV table to this file", type=output_file)
    resamples: int = option(
        "bootstrap resamples of the paired differences from --baseline",
        default=1000,
        type=at_least_one,
    )


@dataclass
class WordnetRequest:
    """`nextquill setup-wordnet`: where Debian's WordNet is and where NLTK should find it."""

    source: str | None = option(
        "a WordNet 3.0 dict folder (default: Debian's /usr/share/wordnet when wordnet-base is "
        "installed, else NLTK's download, which needs the network)",
        flag="--source",
    )
    nltk_dir: str | None = option(
        "the nltk_data folder to copy it into (default: <sys.prefix>/nltk_data)"
    )


@dataclass
class RecipesRequest:
    """`nextquill recipes`: where to copy the shipped recipes."""

    destination: str = argument("folder to copy them into (created if missing)", type=output_folder)


# --- what each subcommand runs (the work's modules imported on use: see the docstring) ---------


def run_weights(request: WeightsRequest) -> None:
    from .axolotl.weights import compute_weights  # on use: Axolotl (see the module docstring)

    cache = compute_weights(request.recipe, request.overrides or {})
    print(f"nextquill: theta_0 effects are cached in {cache}")


def run_evaluate(request, generation) -> None:
    import torch.distributed as dist  # on use, as every runner's work: `--version` needs no torch

    from .evaluation.evaluate import run_evaluation  # on use: torch, transformers

    try:
        document = run_evaluation(request, generation)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if document is None:  # ranks other than 0 generate only
        return
    summary = ", ".join(
        f"{key} {value['value']:.4f} [{value['ci_low']:.4f}, {value['ci_high']:.4f}]"
        for key, value in document["metrics"].items()
    )
    print(f"nextquill evaluate: {document['name']}: {document['n']} rows; {summary}")
    print(f"nextquill evaluate: wrote {document['out_dir']}/predictions.jsonl and metrics.json")


def run_compare(request: CompareRequest) -> None:
    from .evaluation.compare import (  # on use (numpy, the bootstrap)
        comparison_table,
        comparison_warnings,
        difference_table,
        load_run,
    )

    runs = [load_run(path) for path in request.runs]
    for warning in comparison_warnings(runs):
        print(f"warning: {warning}", file=sys.stderr)
    table = comparison_table(
        runs, baseline=request.baseline, fmt=request.format, intervals=request.ci
    )
    print(table, end="")
    if request.baseline and request.format == "markdown":
        print()
        differences = difference_table(
            runs, request.baseline, resamples=request.resamples, show_progress=True
        )
        print(differences, end="")
    if request.csv:
        csv = comparison_table(runs, baseline=request.baseline, fmt="csv", intervals=True)
        write_text_atomic(request.csv, csv)


def run_inspect(request) -> None:
    from .evaluation.inspection import run_inspection  # on use: torch, matplotlib

    for kind, path in run_inspection(request).items():
        print(f"nextquill inspect: {kind}: {path}")


def run_setup_wordnet(request: WordnetRequest) -> None:
    from .evaluation import wordnet_data  # on use: nltk

    nltk_dir = Path(request.nltk_dir) if request.nltk_dir else None
    if request.source or wordnet_data.debian_wordnet_installed():
        source = Path(request.source) if request.source else wordnet_data.DEBIAN_WORDNET
        target = wordnet_data.install_wordnet(source, nltk_dir)
    else:
        target = wordnet_data.download_wordnet(nltk_dir)
    wordnet_data.require_wordnet()
    print(f"nextquill setup-wordnet: WordNet 3.0 installed in {target}")


def run_prompts(request) -> None:
    from .evaluation.prompts import render_prompts  # on use: transformers

    print("\n\n".join(render_prompts(request)))


def run_recipes(request: RecipesRequest) -> None:
    copied = copy_recipes(Path(request.destination))
    print(f"nextquill recipes: copied {len(copied)} recipes into {request.destination}")


def run_demo() -> None:
    from .demo.run import main as demo_main  # on use; importing the demo makes the process offline

    demo_main()


def copy_recipes(destination: Path) -> list[Path]:
    """Copy the recipes shipped with the package into ``destination`` (the TRL-style configs
    into its ``trl/``); when a file of the same name is already there nothing is copied (and
    the error names it)."""
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


# --- the table ----------------------------------------------------------------------------------


def evaluation_request(name: str) -> Callable[[], type]:
    """The request class of an evaluation subcommand, imported when the parser is built (those
    modules import torch: `--version` builds no parser)."""

    def load() -> type:
        module, _, cls = name.rpartition(".")
        return getattr(importlib.import_module(f"nextquill_plugin.evaluation.{module}"), cls)

    return load


@dataclass(frozen=True)
class Subcommand:
    """One `nextquill` subcommand: its help, the dataclasses whose fields are its options (one
    with an ``overrides`` field takes the recipe overrides given after ``--``), and its runner,
    called with one instance of each."""

    help: str
    requests: tuple[type | Callable[[], type], ...]
    run: Callable[..., None]
    description: str | None = None
    errors: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError)

    def request_classes(self) -> list[type]:
        return [r if isinstance(r, type) else r() for r in self.requests]


SUBCOMMANDS: dict[str, Subcommand] = {
    "weights": Subcommand(
        "compute the theta_0 token weights of a recipe ahead of training",
        (WeightsRequest,),
        run_weights,
        errors=(OSError, ValueError),
    ),
    "evaluate": Subcommand(
        "generate a review for every row of a split and score ROUGE-1/L, METEOR, BLEU",
        (
            evaluation_request("evaluate.EvaluationRequest"),
            evaluation_request("generation.GenerationSettings"),
        ),
        run_evaluate,
        description="Without --checkpoint the recipe's base_model is evaluated as it is "
        "(the paper's untuned row). Writes predictions.jsonl and metrics.json.",
    ),
    "compare": Subcommand(
        "compare evaluations (Table 1 / Table 2)", (CompareRequest,), run_compare
    ),
    "inspect": Subcommand(
        "per-token causal effects and weights: HTML page, terminal, plots",
        (evaluation_request("inspection.InspectionRequest"),),
        run_inspect,
    ),
    "setup-wordnet": Subcommand(
        "WordNet 3.0 for METEOR where NLTK finds it: Debian's wordnet-base, else NLTK's download",
        (WordnetRequest,),
        run_setup_wordnet,
    ),
    "prompts": Subcommand(
        "print the exact prompt text `evaluate` generates from (for other tools)",
        (evaluation_request("prompts.PromptsRequest"),),
        run_prompts,
    ),
    "recipes": Subcommand(
        "copy the shipped recipes (every domain and variant, and the mixed example)",
        (RecipesRequest,),
        run_recipes,
    ),
    "demo": Subcommand("run the end-to-end demo on the tiny local model", (), run_demo, errors=()),
}
# Parsed by TRL's own parser, which takes every argument after it (as `trl sft` would).
TRL_SFT = "trl-sft"
TRL_SFT_HELP = "train a TRL-style YAML config under TRL's SFTTrainer: --config FILE"


def build_parser(prog: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The command line and each subcommand's parser (for its own usage in errors)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(TRL_SFT, help=TRL_SFT_HELP)
    for name, subcommand in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=subcommand.help, description=subcommand.description)
        for request in subcommand.request_classes():
            add_dataclass_options(sub, request)
    return parser, commands.choices


# The libraries each framework's extra installs (pyproject.toml): a command that needs one names
# the extra instead of ending in a ModuleNotFoundError.
EXTRA_OF_LIBRARY = {"axolotl": "axolotl", "click": "axolotl", "trl": "trl", "datasets": "trl"}


def missing_extra(error: ModuleNotFoundError, command: str) -> SystemExit:
    """The one-line exit for a command whose framework is not installed."""
    library = (error.name or "").split(".")[0]
    if library not in EXTRA_OF_LIBRARY:
        raise error
    extra = EXTRA_OF_LIBRARY[library]
    return SystemExit(
        f"{command}: needs {library}, which this install lacks; install the {extra} extra: "
        f"pip install 'nextquill-axolotl[{extra}]'"
    )


def run_trl_sft(argv: list[str], prog: str) -> None:
    """`nextquill trl-sft ...`: TRL's parser takes the rest, as `trl sft` would."""
    try:
        from .trl.command import main as trl_main  # on use: TRL
    except ModuleNotFoundError as error:
        raise missing_extra(error, f"{prog} {TRL_SFT}") from None
    try:
        trl_main(argv, prog=f"{prog} {TRL_SFT}")
        return
    except KeyboardInterrupt:
        pass  # said below, once the interrupted frames are released (interrupted())
    except (OSError, ValueError, TypeError) as error:  # TypeError: rows of the wrong kind
        raise SystemExit(f"{prog} {TRL_SFT}: {error}") from None
    raise interrupted(f"{prog} {TRL_SFT}")


def main(argv: list[str] | None = None, prog: str = "nextquill") -> None:
    """The command line. Exit codes: 0 done, 1 a run that failed (a message says why), 2 a
    command line that is wrong (the subcommand's usage says how), 130 interrupted (Ctrl-C). Recipe overrides, for the
    commands that read a recipe, go after ``--``: ``nextquill evaluate r.yml -- --sequence_len 2048``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_library_noise()
    if argv[:1] == ["--version"]:  # without building the parsers, which import torch
        print(f"{prog} {package_version()}")
        return
    if argv[:1] == [TRL_SFT]:
        return run_trl_sft(argv[1:], prog)
    parser, subparsers = build_parser(prog)
    after_cut: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, after_cut = argv[:cut], argv[cut + 1 :]
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = f"; recipe overrides go after --: {prog} {args.command} ... -- {' '.join(extra)}"
        subparsers[args.command].error(
            f"unrecognized arguments: {' '.join(extra)}"
            + (hint if extra[0].startswith("--") else "")
        )
    subcommand = SUBCOMMANDS[args.command]
    classes = subcommand.request_classes()
    if after_cut and not any(reads_recipe(cls) for cls in classes):
        subparsers[args.command].error(f"{args.command} takes no recipe overrides")
    try:
        overrides = parse_overrides(after_cut) if after_cut else {}
    except ValueError as error:
        subparsers[args.command].error(str(error))
    try:  # a value the options' dataclasses refuse is a wrong command line: exit 2, usage
        requests = [
            dataclass_from_args(
                cls, args, **({"overrides": overrides} if reads_recipe(cls) else {})
            )
            for cls in classes
        ]
    except ValueError as error:
        subparsers[args.command].error(str(error))
    try:
        subcommand.run(*requests)
        return
    except KeyboardInterrupt:
        pass  # said below, once the interrupted frames are released (interrupted())
    except ModuleNotFoundError as error:
        raise missing_extra(error, f"{prog} {args.command}") from None
    except UsageError as error:
        subparsers[args.command].error(str(error))
    except subcommand.errors as error:  # a refusal of ours: its message, not pydantic's dump
        raise SystemExit(f"{prog} {args.command}: {refusal_message(error) or error}") from None
    raise interrupted(f"{prog} {args.command}")


def reads_recipe(request: type) -> bool:
    """Whether a request reads a recipe, and so takes the recipe overrides (an ``overrides``
    field)."""
    return "overrides" in {f.name for f in fields(request)}


if __name__ == "__main__":
    main(sys.argv[1:])
