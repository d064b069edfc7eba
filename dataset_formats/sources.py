"""The identity of a recipe's data file (path, size, SHA-256 of its content), stamped on every
row a dataset type makes, so that rows Axolotl prepared from an older version of the file are
caught: Axolotl's prepared-data hash covers the recipe, not the file's content. The content, not
the modification time: a file edited in place to the same size with its time put back is another
file. Reading it once more costs little beside tokenizing it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nextquill_common.jsonl import JSON_SUFFIXES


def file_identity(path: Path, files: list[Path] | None = None) -> dict[str, Any]:
    """Path, size and content digest of a file, of a folder's files (names included), or of
    ``files`` (a dataset's ``data_files``), shown as ``path``."""
    if files is None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        name = str(file.relative_to(path)) if path.is_dir() else ""  # a folder's file names count
        digest.update(name.encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    identity = {
        "path": str(path),
        "size": sum(file.stat().st_size for file in files),
        "sha256": digest.hexdigest(),
    }
    if files != [path] and not path.is_dir():
        identity["files"] = [str(file) for file in files]
    return identity


def named_data_files(ds_cfg: Mapping[str, Any] | None) -> list[Path]:
    """The local files of a dataset entry's ``data_files`` (a path, a list, or a split
    mapping: Axolotl's ``path: json`` form), as absolute paths; [] without them."""
    files = (ds_cfg or {}).get("data_files") if hasattr(ds_cfg or {}, "get") else None
    if isinstance(files, Mapping):
        files = [
            f for value in files.values() for f in (value if isinstance(value, list) else [value])
        ]
    elif isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return []
    return [Path(f).expanduser().absolute() for f in files]


def local_data_path(ds_cfg: Mapping[str, Any] | None) -> Path | None:
    """The local file or folder a dataset entry reads (its first ``data_files`` file, else its
    ``path``); None for a Hub dataset or an entry without either."""
    files = named_data_files(ds_cfg)
    if files:
        return files[0]
    raw = (ds_cfg or {}).get("path") if hasattr(ds_cfg or {}, "get") else None
    if not isinstance(raw, str):
        return None
    path = Path(raw).expanduser().absolute()  # a symlink stays one: re-pointing it is a change
    return path if path.exists() else None


def local_data_files(ds_cfg: Mapping[str, Any] | None) -> list[Path]:
    """A dataset entry's ``data_files``, else its local ``path`` (a file or a folder); []
    for a Hub dataset."""
    path = local_data_path(ds_cfg)
    return named_data_files(ds_cfg) or ([path] if path else [])


def data_source(ds_cfg: Mapping[str, Any] | None) -> str | None:
    """The identity (JSON text) of a dataset entry's local files or folder; None for a hub
    dataset or an entry without a path."""
    files = [file for file in named_data_files(ds_cfg) if file.is_file()]
    if files:
        return json.dumps(file_identity(files[0], files), sort_keys=True)
    path = local_data_path(ds_cfg)
    if path is None:
        return None
    return json.dumps(file_identity(path), sort_keys=True)


def changed_source(source: str) -> str | None:
    """Why rows stamped with ``source`` no longer match their file, or None."""
    then = json.loads(source)
    path = Path(then["path"])
    files = [Path(file) for file in then.get("files", [])] or None
    if not all(file.exists() for file in files or [path]):
        return None  # moved or removed since: the prepared rows are all there is
    now = file_identity(path, files)
    if now["sha256"] == then.get("sha256"):  # rows stamped before the digest have none
        return None
    return (
        f"{path} has changed since its rows were prepared ({then['size']} bytes then, "
        f"{now['size']} now; other content)"
    )


# What datasets' save_to_disk writes at the top of a Dataset or DatasetDict folder.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")


def files_a_loader_reads(path: Path) -> list[Path]:
    """The JSON(L) files a ``datasets`` loader reads for ``path``: the file itself; for a folder,
    those its dataset card's configs (or datasets' default split patterns) name, as datasets
    itself resolves them (a build folder's stats.json is not data); [] where datasets cannot
    tell (a folder saved with save_to_disk, say): the loader then reports what it cannot read."""
    if path.is_file():
        return [path]
    if any((path / name).is_file() for name in SAVED_DATASET_FILES):
        return []  # Axolotl reads it with load_from_disk: Arrow files, JSON metadata
    try:
        from datasets import load_dataset_builder  # only for a folder, and only here

        files = load_dataset_builder(str(path)).config.data_files or {}
    except Exception:  # noqa: BLE001 - whatever datasets cannot resolve, its loader reports
        return []
    named = {Path(file) for split in files.values() for file in split}
    return sorted(file for file in named if file.name.endswith(JSON_SUFFIXES))
