"""Stage 2 of the builder: DuckDB turns the Parquet columns into user rows and splits.

De-duplication, the iterative k-core, the target/profile split, joining item metadata and
building history lists, streaming and spilling to disk under a memory limit. DuckDB rather than
Polars: its out-of-core window functions and joins spill to disk by design, which the per-user
windows over 29.5M rows (Books) need.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue

import numpy as np
import pyarrow as pa

from .common import SPLITS, BuildError, BuildOptions, Report


def _delete(con, reason: str, report: Report, sql: str) -> int:
    before = con.execute("SELECT count(*) FROM r").fetchone()[0]
    con.execute(sql)
    removed = before - con.execute("SELECT count(*) FROM r").fetchone()[0]
    report.reviews_dropped[reason] += removed
    return removed


def select_users_and_targets(con, report: Report, o: BuildOptions, say) -> None:
    """De-duplicate, iterate the k-core, mark targets, iterate the profile filter."""
    order = "timestamp, file_index, line_no"
    # Reviews of items without (kept) metadata.
    before = con.execute("SELECT count(*) FROM r").fetchone()[0]
    _delete(
        con,
        "item_filtered",
        report,
        "DELETE FROM r WHERE parent_asin NOT IN (SELECT parent_asin FROM items)",
    )
    if before and con.execute("SELECT count(*) FROM r").fetchone()[0] == 0:
        raise BuildError(
            f"none of the {before} valid reviews matches an item of the metadata files "
            f"({report.items_kept} items kept of {report.items_read} read; joined on parent_asin): "
            "are --reviews and --meta of the same category?"
        )
    # Per user, one review per item and per text: the earliest stays.
    for reason, column in (("duplicate_item", "parent_asin"), ("duplicate_text", "text_hash")):
        _delete(
            con,
            reason,
            report,
            f"""DELETE FROM r WHERE rowid IN (SELECT rid FROM (
            SELECT rowid AS rid, row_number() OVER (PARTITION BY user_id, {column} ORDER BY {order}) AS k FROM r) WHERE k > 1)""",
        )
    rounds = 0
    while True:
        rounds += 1
        removed = _delete(
            con,
            "k_core",
            report,
            f"""DELETE FROM r WHERE parent_asin IN (
            SELECT parent_asin FROM r GROUP BY 1 HAVING count(DISTINCT user_id) < {o.min_item_users})""",
        )
        removed += _delete(
            con,
            "k_core",
            report,
            f"""DELETE FROM r WHERE user_id IN (
            SELECT user_id FROM r GROUP BY 1 HAVING count(*) < {o.min_user_reviews} OR count(*) > {o.max_user_reviews})""",
        )
        if not removed:
            break
    say(f"k-core stable after {rounds} rounds")
    # The last N reviews of each user are targets 1..N; the rest is the profile (target 0).
    con.execute(f"""CREATE TABLE r2 AS SELECT *, greatest(0, pos - (n - {o.targets_per_user}))::INTEGER AS target_index FROM (
        SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY {order}) AS pos,
               count(*) OVER (PARTITION BY user_id) AS n FROM r)""")
    con.execute("DROP TABLE r; ALTER TABLE r2 RENAME TO r")
    while True:
        removed = _delete(
            con,
            "profile_item_rare",
            report,
            f"""DELETE FROM r WHERE target_index = 0 AND parent_asin IN (
            SELECT parent_asin FROM r WHERE target_index = 0 GROUP BY 1 HAVING count(DISTINCT user_id) < {o.min_profile_item_users})""",
        )
        removed += _delete(
            con,
            "profile_user_short",
            report,
            f"""DELETE FROM r WHERE user_id IN (
            SELECT user_id FROM r GROUP BY 1 HAVING count(*) FILTER (WHERE target_index = 0) < {o.min_profile_reviews})""",
        )
        if not removed:
            break


class BackgroundWriter:
    """Files written by a background thread straight from lists of byte pieces (slices of the
    batches' buffers) with ``os.writev``: the kernel's copy is the only one, and building the
    next rows overlaps writing the last ones. An error of the writer is raised here."""

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths
        self.queue: Queue = Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="nextquill-write")

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                handles = {
                    name: stack.enter_context(open(path, "wb", buffering=0))
                    for name, path in self.paths.items()
                }
                while (item := self.queue.get()) is not None:
                    name, pieces = item
                    _write_pieces(handles[name].fileno(), pieces)
        except BaseException as error:  # raised in the building thread
            self.error = error
            while self.queue.get() is not None:  # keep the producer from blocking
                pass

    def add(self, name: str, pieces: list) -> None:
        """Queue ``pieces`` (bytes-like, kept alive until written) for the file ``name``."""
        if self.error is not None:
            raise self.error
        self.queue.put((name, pieces))

    def __enter__(self) -> BackgroundWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _write_pieces(fd: int, pieces: list) -> None:
    """Write every piece, in order, in as few system calls as the OS allows."""
    for start in range(0, len(pieces), IOV_MAX):
        group = pieces[start : start + IOV_MAX]
        written = os.writev(fd, group)
        expected = sum(len(piece) for piece in group)
        if written < expected:  # a short write (rare on files): write the rest plainly
            rest = memoryview(b"".join(group))[written:]
            while rest:
                rest = rest[os.write(fd, rest) :]


MIN_BATCH_ROWS = 65_536
ROW_PARTS = (b'{"user_id":', b',"target":', b',"history":[', b"]}\n")


def _ordered_reviews(con, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Every kept review by user and time: its user id and review as JSON bytes (the review
    followed by a comma, so that consecutive reviews are a history already), its position in
    the user's reviews (1-based) and its split (0: profile, 1-3: SPLITS), in batches that end
    where a user ends."""
    reader = con.sql(
        """SELECT encode(nq_string_json(user_id)) AS user_json,
                  encode(nq_review_json(to_json({
                      item_id: parent_asin, item_title: item_title,
                      item_description: item_description, rating: rating, title: title,
                      text: text, timestamp: timestamp}), rating) || ',') AS review_json,
                  pos, split_code AS split
           FROM final ORDER BY user_id, pos"""
    ).to_arrow_reader(batch_rows)
    carry = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        if carry is not None:
            batch = pa.Table.from_batches([carry, batch]).combine_chunks().to_batches()[0]
        pos = batch.column("pos").to_numpy()
        last_user_start = len(pos) - int(pos[-1])  # where the batch's last user begins
        if last_user_start > 0:
            yield batch.slice(0, last_user_start)
            carry = batch.slice(last_user_start)
        else:
            carry = batch
    if carry is not None:
        yield carry


def _offsets(values: pa.Array) -> list[int]:
    """Where each value of a binary array starts in its data buffer (and where the last ends)."""
    width = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], width)
    return offsets[values.offset : values.offset + len(values) + 1].tolist()


def _rows(batch: pa.RecordBatch, max_history: int) -> dict[int, list]:
    """The JSONL rows of one batch's target reviews, per split code, as byte pieces: constants
    and slices of the batch's JSON buffers (nothing is copied)."""
    users, reviews = batch.column("user_json"), batch.column("review_json")
    user_offsets, review_offsets = _offsets(users), _offsets(reviews)
    user_bytes, review_bytes = memoryview(users.buffers()[2]), memoryview(reviews.buffers()[2])
    pos, split = batch.column("pos").to_numpy(), batch.column("split").to_numpy()
    targets = np.flatnonzero(split > 0)
    starts = targets - np.minimum(pos[targets] - 1, max_history)
    pieces: dict[int, list] = {code: [] for code in range(1, len(SPLITS) + 1)}
    head, target, history, tail = ROW_PARTS
    for i, first, code in zip(
        targets.tolist(), starts.tolist(), split[targets].tolist(), strict=True
    ):
        end = review_offsets[i]
        pieces[code] += (
            head,
            user_bytes[user_offsets[i] : user_offsets[i + 1]],
            target,
            review_bytes[end : review_offsets[i + 1] - 1],
            history,
            review_bytes[review_offsets[first] : max(end - 1, review_offsets[first])],
            tail,
        )
    return {code: parts for code, parts in pieces.items() if parts}


def write_splits(con, out_tmp: Path, report: Report, o: BuildOptions) -> None:
    """One row per target review: the target and up to ``max_history`` earlier reviews.

    DuckDB writes each review's JSON once (as orjson would, see text_rules) and sorts; Python
    only concatenates slices of those bytes into rows (a review repeated in 50 histories is
    serialised once, not 50 times) while a second thread writes them.
    """
    first_valid = o.targets_per_user - o.validation_targets - o.test_targets + 1
    first_test = o.targets_per_user - o.test_targets + 1
    con.execute(
        f"""CREATE TABLE final AS SELECT * EXCLUDE (pos),
                   -- 1-based among the kept reviews (the profile filter leaves gaps in pos)
                   row_number() OVER (PARTITION BY user_id ORDER BY pos) AS pos
            FROM (SELECT r.*, i.item_title, i.item_description,
                         CASE WHEN target_index >= {first_test} THEN 3
                              WHEN target_index >= {first_valid} THEN 2
                              WHEN target_index > 0 THEN 1 ELSE 0 END::TINYINT AS split_code
                  FROM r JOIN items i USING (parent_asin))"""
    )
    batch_rows = max(MIN_BATCH_ROWS, 2 * o.max_user_reviews)  # holds any one user whole
    with BackgroundWriter({split: out_tmp / f"{split}.jsonl" for split in SPLITS}) as writer:
        for batch in _ordered_reviews(con, batch_rows):
            for code, pieces in _rows(batch, o.max_history).items():
                writer.add(SPLITS[code - 1], pieces)
    lengths = con.execute(
        f"""SELECT split_code, count(*), min(h), max(h), sum(h),
                   list_sort(list(h))[count(*) // 2 + 1]
            FROM (SELECT split_code, least(pos - 1, {o.max_history}) AS h
                  FROM final WHERE split_code > 0) GROUP BY 1"""
    ).fetchall()
    by_split = {
        SPLITS[code - 1]: (n, low, high, total, median)
        for code, n, low, high, total, median in lengths
    }
    for split in SPLITS:
        n, low, high, total, median = by_split.get(split, (0, 0, 0, 0, 0))
        report.rows_per_split[split] = n
        report.history_length[split] = (
            {
                "min": float(low),
                "median": float(median),
                "mean": round(total / n, 2),
                "max": float(high),
            }
            if n
            else {}
        )
    report.reviews_kept = con.execute("SELECT count(*) FROM r").fetchone()[0]
    report.users = con.execute("SELECT count(DISTINCT user_id) FROM final").fetchone()[0]
    report.items_used = con.execute("SELECT count(DISTINCT parent_asin) FROM r").fetchone()[0]
