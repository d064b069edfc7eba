"""Where a build goes: never over what the builder did not write, always whole.

- ``--out`` must be new, empty, or a previous build (only the files a build writes, and a
  ``stats.json`` that a build wrote); anything else is refused before any work starts.
- A build is written into a work folder beside ``--out`` and put in place at the end: by an
  atomic exchange of the two folders where the OS offers one (Linux ``renameat2``), else by
  renaming the old build aside, the new one in, and removing the old one. A build killed
  between those two renames leaves the old build aside under ``.<out>.previous``; the next
  build puts it back before it starts.
- Work folders of killed builds (``.<out>.building-*``, which hold the id of the process that
  made them) are removed by the next build.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from nextquill_common.jsonl import write_problem

from .common import SPLITS, BuildError

STATS = "stats.json"
CARD = "README.md"  # the dataset card: the folder uploads to the Hugging Face Hub as it is
BUILD_FILES = frozenset({*(f"{split}.jsonl" for split in SPLITS), STATS, CARD})
OWNER = "owner.json"
AT_FDCWD = -100  # Linux <fcntl.h>: a path relative to the working directory
RENAME_EXCHANGE = (
    2  # Linux <linux/fs.h>  # in a work folder: which process on which host is building there
)


def is_previous_build(folder: Path) -> bool:
    """True when ``folder`` holds only what a build writes, with a stats.json from a build."""
    names = {entry.name for entry in folder.iterdir()}
    if not names <= BUILD_FILES or STATS not in names:
        return False
    try:
        stats = json.loads((folder / STATS).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stats, dict) and {"reviews_read", "accounted"} <= set(stats)


def dataset_card(name: str, report: dict, options: dict, inputs: list[str]) -> str:
    """A Hugging Face dataset card for a build: the ``configs`` block naming the three split
    files (so ``load_dataset(folder)`` and a recipe's ``path: org/name`` find them), the
    protocol's thresholds, the counts from stats.json and the source data's terms."""
    splits = "\n".join(f"  - split: {split}\n    path: {split}.jsonl" for split in SPLITS)
    thresholds = "\n".join(f"| `--{k.replace('_', '-')}` | {v} |" for k, v in options.items())
    rows = ", ".join(f"{split} {report['rows_per_split'].get(split, 0)}" for split in SPLITS)
    return f"""---
configs:
- config_name: default
  data_files:
{splits}
license: other
tags:
- personalization
- nextquill
- amazon-reviews-2023
---

# {name}

User rows for personalized review generation, built by `nextquill-data build` (the
nextquill-axolotl package) from Amazon Reviews 2023 with the DPL protocol (Qiu et al., 2025)
that NextQuill (Zhao et al., 2025) follows: {report["users"]} users; rows {rows}.

Each row: `user_id`, `target` (the review to write: item title and description, rating, title,
text, timestamp) and `history` (the user's earlier reviews, oldest first). Train with Axolotl and
the NextQuill plugin:

```yaml
datasets:
  - path: <this folder, or org/name on the Hub>
    split: train
    type: dataset_formats.amazon_reviews
```

Source files: {", ".join(inputs)}. `stats.json` accounts for every input line (kept or dropped,
by reason).

| threshold | value |
| --- | --- |
{thresholds}

## License

The rows are derived from Amazon Reviews 2023 (McAuley Lab, UCSD,
https://amazon-reviews-2023.github.io/); its terms apply to this data. Check them before you
share it.
"""


def aside_path(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.previous"


def check_out_dir(out_dir: Path) -> None:
    """Refuse an ``--out`` that the build would have to delete something foreign from."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BuildError(f"--out {out_dir} is a file; give a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_previous_build(out_dir):
        raise BuildError(
            f"--out {out_dir} is not empty and is not a previous build of nextquill-data "
            f"(which holds only {', '.join(sorted(BUILD_FILES))}); nothing was changed. "
            "Give a new or empty folder, or move its files elsewhere first."
        )


def check_writable(out_dir: Path) -> None:
    """Refuse an ``--out`` the build could not write to, before any work: the build writes a
    work folder beside it and moves it in place (and replaces a previous build's files)."""
    nearest = next(p for p in [out_dir.parent, *out_dir.parent.parents] if p.exists())
    for folder in (nearest, out_dir):
        if not folder.is_dir():
            continue
        problem = write_problem(folder)
        if problem:
            raise BuildError(
                f"--out {out_dir}: cannot write to {folder} ({problem}); give a folder on a "
                "writable disk"
            )


def recover_interrupted_swap(out_dir: Path) -> str | None:
    """Put back a previous build left aside by a build killed while swapping; drop a leftover
    copy when both exist. Returns what was done, for the log."""
    aside = aside_path(out_dir)
    if not aside.is_dir() or not is_previous_build(aside):
        return None
    if out_dir.exists():
        shutil.rmtree(aside)
        return f"removed {aside}, a previous build left over by an interrupted swap"
    os.replace(aside, out_dir)
    return f"restored the previous build from {aside} (a build was interrupted while swapping)"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_work_folders(out_dir: Path) -> list[Path]:
    """Remove work folders of builds for ``out_dir`` whose process on this host has ended."""
    removed = []
    for folder in out_dir.parent.glob(f".{out_dir.name}.building-*"):
        try:
            owner = json.loads((folder / OWNER).read_text())
            mine = owner.get("host") == socket.gethostname()
            stale = mine and not _process_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            stale = True  # no readable owner: not a folder a running build could be using
        if stale and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def make_work_folder(out_dir: Path) -> Path:
    """A new work folder beside ``out_dir``, labelled with this process."""
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    (work / OWNER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return work


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    with contextlib.suppress(OSError, AttributeError):
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        renameat2.argtypes = [
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_uint,
        ]
        first_path, second_path = os.fsencode(first), os.fsencode(second)
        return renameat2(AT_FDCWD, first_path, AT_FDCWD, second_path, RENAME_EXCHANGE) == 0
    return False


def put_in_place(result: Path, out_dir: Path) -> None:
    """Make the complete build in ``result`` the content of ``out_dir``; see the module doc."""
    if not out_dir.exists():
        os.replace(result, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()  # an empty folder: nothing of anybody's is lost
        os.replace(result, out_dir)
        return
    if _exchange(result, out_dir):
        shutil.rmtree(result)  # now the previous build
        return
    aside = aside_path(out_dir)
    os.replace(out_dir, aside)
    os.replace(result, out_dir)
    shutil.rmtree(aside)
