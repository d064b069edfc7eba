"""The identity of a recipe's data file (path, size, modification time), stamped on every row
a dataset type makes, so that rows Axolotl prepared from an older version of the file are
caught: Axolotl's prepared-data hash covers the recipe, not the file's content."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def file_identity(path: Path) -> dict[str, Any]:
    """Size and modification time of a file, or summed and latest over a folder's files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [p.stat() for p in files]
    return {
        "path": str(path),
        "size": sum(s.st_size for s in stats),
        "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
    }


def data_source(ds_cfg: Mapping[str, Any] | None) -> str | None:
    """The identity (JSON text) of a dataset entry's local file or folder; None for a hub
    dataset or an entry without a path."""
    raw = (ds_cfg or {}).get("path") if hasattr(ds_cfg or {}, "get") else None
    if not isinstance(raw, str):
        return None
    path = Path(raw).expanduser().resolve()
    if not path.exists():
        return None
    return json.dumps(file_identity(path), sort_keys=True)


def changed_source(source: str) -> str | None:
    """Why rows stamped with ``source`` no longer match their file, or None."""
    then = json.loads(source)
    path = Path(then["path"])
    if not path.exists():
        return None  # moved or removed since: the prepared rows are all there is
    now = file_identity(path)
    if (now["size"], now["mtime_ns"]) == (then["size"], then["mtime_ns"]):
        return None
    return (
        f"{path} has changed since its rows were prepared ({then['size']} bytes then, "
        f"{now['size']} now; modified since)"
    )
