"""Reading a recipe or config file as YAML: a mapping, with each key written once. PyYAML (and so
Axolotl and TRL) keeps the last value of a key written twice without a word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with a key written twice, naming the key and
    both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *defaults`: keys written here may override them
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is written twice (lines {seen[key]} and {line}); YAML would "
                    "keep the last value without a word: delete one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_mapping(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """The file's YAML mapping (empty for an empty file); a ValueError naming the file when it is
    not YAML, not a mapping, or writes a key twice."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ValueError(f"{what} {path}: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{what} {path} is a YAML {type(data).__name__}, not a mapping of keys to values"
        )
    return data


def missing_local_model(name: Any) -> str | None:
    """Why ``base_model`` names a local folder that does not exist, or None. A name that starts
    like a path, or has more than the one slash of a Hub id (``org/name``), is a folder; without
    this, loading it ends in huggingface_hub's "Repo id must be in the form ..."."""
    if not isinstance(name, str):
        return None
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_local and not Path(name).expanduser().exists():
        return f"base_model {name}: no such folder"
    return None


def missing_deepspeed_config(value: Any) -> str | None:
    """Why ``deepspeed`` names a JSON file that does not exist, or None. Axolotl keeps such a name
    as it is and fails later: after the model has loaded, or (on CPU) silently compiling
    DeepSpeed's CPU operators first."""
    if not isinstance(value, str) or not value or value.lstrip().startswith("{"):
        return None  # unset, or JSON written inline
    if Path(value).expanduser().is_file():
        return None
    return (
        f"deepspeed {value}: no such file. `axolotl fetch deepspeed_configs` writes Axolotl's "
        "stock configs into ./deepspeed_configs (it needs the network); or train without "
        "DeepSpeed (remove the key, or `--deepspeed=` on the command line)."
    )
