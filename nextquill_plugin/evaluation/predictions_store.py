"""Partial predictions of an evaluation: one JSON Lines file per process in the output folder,
appended batch by batch (forced to disk), so that a rerun of the same evaluation continues
where it stopped. Records carry the run's key: files of another evaluation are never resumed.
"""

from __future__ import annotations

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
        number of processes). Records of another evaluation (other settings, rows or model) are
        refused, not deleted: they are someone's interrupted work."""
        tokens: dict[int, list[int]] = {}
        for partial in self.files():
            records = read_jsonl_tolerant(partial)
            if any(not self._belongs(r) for r in records):
                raise ValueError(
                    f"{partial} holds the partial predictions of another evaluation (other "
                    "settings, rows or checkpoint); pass --out to write this one elsewhere, or "
                    "run that evaluation again to finish it"
                )
            tokens.update((r["index"], r["tokens"]) for r in records)
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
        """What every rank may continue from. Each rank cuts its own file back to its last
        complete line (a kill or a full disk can leave half a record, which the next append
        would glue onto), so that appending continues a valid file."""
        done = self.read()
        distributed.barrier()  # every rank has read the files before any grows
        if self.path.exists():
            cut_torn_line(self.path)
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


def cut_torn_line(path: Path) -> None:
    """Truncate ``path`` after its last newline (nothing when it ends with one)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
