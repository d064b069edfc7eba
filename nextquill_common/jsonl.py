"""Reading and writing JSON Lines files (plain or gzip), the one place that does it.

Writes are atomic (a temporary file beside the target, renamed over it): a reader sees the old
file or the complete new one. Gzip output has no timestamp, so the same records give the same
bytes. Reads name the file and line of a bad record.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def is_gzip(path: Path) -> bool:
    """True for ``.gz`` files, which are read and written compressed."""
    return Path(path).suffix == ".gz"


def input_file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as an input file ("does not exist", "is a folder, not a
    file", ...), or None."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder, not a file"
    if not path.is_file():
        return "is not a regular file (a device or a pipe)"
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, record)`` of every non-blank line; a bad line (not JSON, not UTF-8)
    raises ValueError naming ``path:line``."""
    path = Path(path)
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{number}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None


JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
PROGRESS_FROM_BYTES = 64 << 20  # a check of a larger file shows a progress bar


@contextlib.contextmanager
def _named_gzip_errors(path: Path) -> Iterator[None]:
    """A cut-off or corrupt gzip file as a ValueError that names it."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(
            f"{path} is not a complete gzip file ({error}); write or download it again"
        ) from None


def first_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, text) of the first non-blank line (plain or gzip); None for an empty file."""
    opener = gzip.open if is_gzip(path) else open
    with _named_gzip_errors(path), opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                return number, line
    return None


def check_json_lines(path: Path, keep_rows: int = 0) -> tuple[int, list[tuple[int, dict]]]:
    """Read every line of a JSON Lines file (plain or gzip) and raise ValueError naming
    ``path:line`` at the first that is not UTF-8 or not a JSON object: the ``datasets`` loader
    stops there naming neither (and a wrong row number). Returns the number of rows and the
    first ``keep_rows`` of them with their line numbers. A bar shows progress on large files."""
    from tqdm.auto import tqdm  # only when a check runs: this module is imported by every command

    rows, kept = 0, []
    with open(path, "rb") as raw:
        size = raw.seek(0, 2)
        raw.seek(0)
        lines = gzip.GzipFile(fileobj=raw) if is_gzip(path) else raw
        progress = tqdm(
            total=size, unit="B", unit_scale=True, desc=f"checking {path.name}",
            disable=size < PROGRESS_FROM_BYTES,
        )  # fmt: skip
        with progress, _named_gzip_errors(path):
            for number, line in enumerate(lines, start=1):
                if number % 4096 == 0:
                    progress.update(raw.tell() - progress.n)
                try:
                    text = line.decode("utf-8")
                    if not text.strip():
                        continue
                    row = json.loads(text)
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{number} is not UTF-8 text") from None
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}:{number} is not a JSON object ({error.msg}); a JSON Lines file "
                        "holds one JSON object per line (a cut-off line: the file was not written "
                        "completely, write it again)"
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}:{number} is not a JSON object (a {type(row).__name__}); a JSON "
                        "Lines file holds one JSON object per line"
                    )
                rows += 1
                if len(kept) < keep_rows:
                    kept.append((number, row))
            progress.update(size - progress.n)
    return rows, kept


def check_json_rows_file(path: Path, keep_rows: int = 0) -> list[tuple[int, dict]] | None:
    """A data file of rows, checked before a ``datasets`` loader reads it: ValueError naming
    the file when it is empty, or its line when one is not a JSON object (``check_json_lines``);
    None for a JSON array (the loader reads it whole), else its first ``keep_rows`` rows."""
    first = first_json_line(path)
    if first is None:
        raise ValueError(f"{path} is empty: it holds no rows")
    if first[1].lstrip().startswith("["):
        return None
    return check_json_lines(path, keep_rows)[1]


def read_jsonl(path: str | Path, limit: int | None = None) -> list[Any]:
    """The records of a JSONL file (the first ``limit`` when given)."""
    records = []
    for _, record in iter_jsonl(path):
        if limit is not None and len(records) >= limit:
            break
        records.append(record)
    return records


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path`` that replaces ``path`` only when the
    block ends without an error; on an error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600; give it what a plain open() would, so that others on a
        # shared machine can read what we write.
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_problem(folder: Path) -> str | None:
    """Why nothing can be written in ``folder`` (made if missing), found out by creating and
    removing a file there (permission bits alone miss read-only mounts and immutable folders),
    or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nextquill-write-check-"):
            pass
    except OSError as error:
        return str(error.strerror or error)
    return None


def nearest_write_problem(path: Path) -> str | None:
    """Why nothing can be written at ``path``, a folder or file that may not exist yet
    ("cannot write to FOLDER (why)"), found by creating and removing a file in its nearest
    existing folder, which is left as it was; or None."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return None  # a file in the way is the caller's to name
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nextquill-write-check-"):
            pass
    except OSError as error:
        return f"cannot write to {folder} ({error.strerror or error})"
    return None


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as handle:
        handle.write(text.encode())
    return Path(path)


def write_jsonl(path: str | Path, records: Iterable[Any], *, sort_keys: bool = False) -> Path:
    """Write ``records`` one per line, atomically; gzip-compressed when ``path`` ends in .gz."""
    with atomic_file(path) as raw:
        # mtime=0: no timestamp in the gzip header, so equal records give equal bytes.
        handle = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if is_gzip(path) else raw
        with contextlib.ExitStack() as stack:
            if handle is not raw:
                stack.enter_context(handle)
            for record in records:
                handle.write((json.dumps(record, sort_keys=sort_keys) + "\n").encode())
    return Path(path)


def append_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Append ``records`` to ``path`` and force them to disk, so that a killed run keeps them."""
    with open(path, "ab") as handle:
        for record in records:
            handle.write((json.dumps(record) + "\n").encode())
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl_tolerant(path: str | Path) -> list[Any]:
    """The records of a file that ``append_jsonl`` wrote, without a last line cut off by a kill
    (any other bad line raises, naming it)."""
    lines = Path(path).read_bytes().split(b"\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated last line of a killed writer
                break
            raise ValueError(f"{path}:{number}: not valid JSON") from None
    return records
