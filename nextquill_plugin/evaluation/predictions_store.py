"""Partial predictions of an evaluation: one JSON Lines file per process in the output folder,
appended batch by batch (forced to disk), so that a rerun of the same evaluation continues
where it stopped. Records carry the run's key: files of another evaluation are never resumed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nextquill_common.jsonl import append_jsonl, read_jsonl_tolerant

from .. import distributed

PARTIAL_GLOB = "predictions.partial.rank*.jsonl"  # generated so far, appended batch by batch


class PartialPredictions:
    """The generated token ids of one evaluation (``key``) over rows named ``prompt_ids``."""

    def __init__(self, out: Path, key: str, prompt_ids: list[str]):
        self.out, self.key, self.prompt_ids = Path(out), key, prompt_ids
        self.rank = distributed.rank_and_size()[0]

    @property
    def path(self) -> Path:
        """This process's file."""
        return self.out / PARTIAL_GLOB.replace("*", str(self.rank))

    def files(self) -> list[Path]:
        return sorted(self.out.glob(PARTIAL_GLOB))

    def read(self) -> dict[int, list[int]]:
        """Generated token ids by row index from the partial files of this evaluation (any
        number of processes); {} when a file holds records of another evaluation."""
        tokens: dict[int, list[int]] = {}
        for partial in self.files():
            records = read_jsonl_tolerant(partial)
            usable = [r for r in records if self._belongs(r)]
            if len(usable) < len(records):
                print(
                    f"nextquill evaluate: {partial} was written by another evaluation; "
                    "starting over",
                    file=sys.stderr,
                )
                return {}
            tokens.update((r["index"], r["tokens"]) for r in usable)
        return tokens

    def _belongs(self, record: dict) -> bool:
        index = record.get("index")
        return (
            record.get("run") == self.key
            and isinstance(index, int)
            and 0 <= index < len(self.prompt_ids)
            and record.get("prompt_id") == self.prompt_ids[index]
        )

    def resume(self) -> dict[int, list[int]]:
        """What every rank may continue from. When nothing is usable, rank 0 removes the old
        files (they are ours: partial files of this command) before any rank appends."""
        done = self.read()
        distributed.barrier()  # every rank has read the files before any is removed or grows
        if not done and self.rank == 0:
            self.remove()
        distributed.barrier()
        return done

    def keep(self, rows: list[int], tokens: list[list[int]]) -> None:
        """Append one generated batch (row indices and their token ids) to this process's file."""
        append_jsonl(
            self.path,
            [
                {"run": self.key, "index": i, "prompt_id": self.prompt_ids[i], "tokens": t}
                for i, t in zip(rows, tokens, strict=True)
            ],
        )

    def complete(self, n_rows: int) -> list[list[int]]:
        """Every row's tokens, in row order; RuntimeError naming the files if any is missing."""
        tokens = self.read()
        missing = [i for i in range(n_rows) if i not in tokens]
        if missing:
            raise RuntimeError(
                f"{len(missing)} rows have no prediction in {self.out}/{PARTIAL_GLOB}"
            )
        return [tokens[i] for i in range(n_rows)]

    def remove(self) -> None:
        for partial in self.files():
            partial.unlink()
