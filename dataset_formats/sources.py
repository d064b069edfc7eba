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


def file_identity(path: Path) -> dict[str, Any]:
    """Path, size and content digest of a file, or of a folder's files (names included)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return {
        "path": str(path),
        "size": sum(file.stat().st_size for file in files),
        "sha256": digest.hexdigest(),
    }


def data_source(ds_cfg: Mapping[str, Any] | None) -> str | None:
    """The identity (JSON text) of a dataset entry's local file or folder; None for a hub
    dataset or an entry without a path."""
    raw = (ds_cfg or {}).get("path") if hasattr(ds_cfg or {}, "get") else None
    if not isinstance(raw, str):
        return None
    path = Path(raw).expanduser().absolute()  # a symlink stays one: re-pointing it is a change
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
    if now["sha256"] == then.get("sha256"):  # rows stamped before the digest have none
        return None
    return (
        f"{path} has changed since its rows were prepared ({then['size']} bytes then, "
        f"{now['size']} now; other content)"
    )
