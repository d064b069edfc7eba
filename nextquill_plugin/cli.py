"""`nextquill` command line: work done ahead of or after `axolotl train`.

nextquill weights RECIPE.yml [--key value ...]   theta_0 effects into the cache, no training
nextquill demo                                    the end-to-end demo (same as `make demo`)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml


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
    """``--key value`` / ``--key=value`` pairs, as `axolotl train` takes them."""
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


def compute_weights(recipe: str, overrides: dict[str, Any]) -> None:
    """Prepare the data and load the model exactly as training does, then fill the cache."""
    from axolotl.cli.args import TrainerCliArgs
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets
    from axolotl.train import setup_model_and_trainer

    cfg = load_cfg(recipe, **overrides)
    if not cfg.nextquill:
        raise SystemExit(
            f"nextquill: {recipe} does not set `nextquill: true`; there are no weights to compute."
        )
    if not cfg.nextquill_token_weighting or str(cfg.nextquill_weight_source) != "initial":
        raise SystemExit(
            "nextquill: this recipe needs no theta_0 pass (nextquill_token_weighting is false or "
            "nextquill_weight_source is current)."
        )
    dataset_meta = load_datasets(cfg=cfg, cli_args=TrainerCliArgs())
    setup_model_and_trainer(cfg, dataset_meta)  # the plugin computes or loads the effects here
    from . import effects_cache_dir

    print(f"nextquill: theta_0 effects are cached in {effects_cache_dir(cfg)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nextquill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser(
        "weights", help="compute the theta_0 token weights of a recipe ahead of training"
    )
    weights.add_argument("recipe")
    commands.add_parser("demo", help="run the end-to-end demo on the tiny local model")
    args, extra = parser.parse_known_args(argv)
    if args.command == "weights":
        compute_weights(args.recipe, parse_overrides(extra))
    elif args.command == "demo":
        if extra:
            parser.error(f"demo takes no arguments, got {extra}")
        from .demo import main as demo_main

        demo_main()


if __name__ == "__main__":
    main(sys.argv[1:])
