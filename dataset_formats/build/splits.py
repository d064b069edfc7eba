"""Stage 2 of the builder: DuckDB turns stage 1's tables (valid reviews, valid items; see
``common.Tables``) into user rows and splits.

De-duplication, the iterative k-core, the target/profile split, joining item metadata and
building history lists, streaming and spilling to disk under a memory limit. DuckDB rather than
Polars: its out-of-core window functions and joins spill to disk by design, which the per-user
windows over 29.5M rows (Books) need.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Queue
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from .common import SPLITS, BuildError, BuildOptions, Report, Tables, count_rows

REVIEWS = Tables.REVIEWS
# A user's reviews in time; reviews with equal timestamps in the order of the input files.
REVIEW_ORDER = "timestamp, file_index, line_no"


def _delete(con, report: Report, reason: str, sql: str) -> int:
    """Run the DELETE ``sql`` on the reviews; count what it removed as dropped for ``reason``."""
    before = count_rows(con, REVIEWS)
    con.execute(sql)
    removed = before - count_rows(con, REVIEWS)
    report.reviews_dropped[reason] += removed
    return removed


def select_users_and_targets(
    con, report: Report, options: BuildOptions, say: Callable[[str], None]
) -> None:
    """De-duplicate, iterate the k-core, mark targets, iterate the profile filter."""
    _drop_reviews_without_items(con, report)
    _drop_duplicates(con, report)
    rounds = _k_core(con, report, options)
    say(f"k-core stable after {rounds} rounds")
    _number_targets(con, options)
    _filter_profiles(con, report, options)


def _drop_reviews_without_items(con, report: Report) -> None:
    """Reviews of items without (kept) metadata go; if none is left, the inputs do not match."""
    before = count_rows(con, REVIEWS)
    _delete(
        con,
        report,
        "item_filtered",
        f"DELETE FROM {REVIEWS} WHERE parent_asin NOT IN (SELECT parent_asin FROM {Tables.ITEMS})",
    )
    if before and count_rows(con, REVIEWS) == 0:
        raise BuildError(
            f"none of the {before} valid reviews matches an item of the metadata files "
            f"({report.items_kept} items kept of {report.items_read} read; joined on parent_asin): "
            "are --reviews and --meta of the same category?"
        )


def _drop_duplicates(con, report: Report) -> None:
    """Per user, one review per item and per text: the earliest stays."""
    for reason, column in (("duplicate_item", "parent_asin"), ("duplicate_text", "text_hash")):
        _delete(
            con,
            report,
            reason,
            f"""DELETE FROM {REVIEWS} WHERE rowid IN (SELECT rid FROM (
            SELECT rowid AS rid,
                   row_number() OVER (PARTITION BY user_id, {column} ORDER BY {REVIEW_ORDER}) AS k
            FROM {REVIEWS}) WHERE k > 1)""",
        )


def _k_core(con, report: Report, options: BuildOptions) -> int:
    """Drop rare items and users with too few or too many reviews until nothing changes;
    return how many rounds that took."""
    rounds = 0
    while True:
        rounds += 1
        removed = _delete(
            con,
            report,
            "k_core",
            f"""DELETE FROM {REVIEWS} WHERE parent_asin IN (
            SELECT parent_asin FROM {REVIEWS} GROUP BY 1
            HAVING count(DISTINCT user_id) < {options.min_item_users})""",
        )
        removed += _delete(
            con,
            report,
            "k_core",
            f"""DELETE FROM {REVIEWS} WHERE user_id IN (
            SELECT user_id FROM {REVIEWS} GROUP BY 1
            HAVING count(*) < {options.min_user_reviews} OR count(*) > {options.max_user_reviews})""",
        )
        if not removed:
            return rounds


def _number_targets(con, options: BuildOptions) -> None:
    """The last N reviews of each user are targets 1..N (``target_index``); the rest is the
    profile (target 0). Also numbers each user's reviews in time (``pos``, 1-based)."""
    numbered = Tables.NUMBERED_REVIEWS
    con.execute(f"""CREATE TABLE {numbered} AS
        SELECT *, greatest(0, pos - (n - {options.targets_per_user}))::INTEGER AS target_index
        FROM (SELECT *, row_number() OVER (PARTITION BY user_id ORDER BY {REVIEW_ORDER}) AS pos,
                     count(*) OVER (PARTITION BY user_id) AS n FROM {REVIEWS})""")
    con.execute(f"DROP TABLE {REVIEWS}; ALTER TABLE {numbered} RENAME TO {REVIEWS}")


def _filter_profiles(con, report: Report, options: BuildOptions) -> None:
    """Drop profile reviews of rare items, and users with too short a profile, until nothing
    changes (targets are never dropped on their own: their user goes, or they stay)."""
    while True:
        removed = _delete(
            con,
            report,
            "profile_item_rare",
            f"""DELETE FROM {REVIEWS} WHERE target_index = 0 AND parent_asin IN (
            SELECT parent_asin FROM {REVIEWS} WHERE target_index = 0 GROUP BY 1
            HAVING count(DISTINCT user_id) < {options.min_profile_item_users})""",
        )
        removed += _delete(
            con,
            report,
            "profile_user_short",
            f"""DELETE FROM {REVIEWS} WHERE user_id IN (
            SELECT user_id FROM {REVIEWS} GROUP BY 1
            HAVING count(*) FILTER (WHERE target_index = 0) < {options.min_profile_reviews})""",
        )
        if not removed:
            return


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
        f"""SELECT encode(nq_string_json(user_id)) AS user_json,
                  encode(nq_review_json(to_json({{
                      item_id: parent_asin, item_title: item_title,
                      item_description: item_description, rating: rating, title: title,
                      text: text, timestamp: timestamp}}), rating) || ',') AS review_json,
                  pos, split_code AS split
           FROM {Tables.SPLIT_REVIEWS} ORDER BY user_id, pos"""
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


class HistoryLengths(NamedTuple):
    """How many earlier reviews the rows of one split carry."""

    rows: int
    shortest: int
    longest: int
    total: int
    median: int

    def to_report(self) -> dict[str, float]:
        if not self.rows:
            return {}
        return {
            "min": float(self.shortest),
            "median": float(self.median),
            "mean": round(self.total / self.rows, 2),
            "max": float(self.longest),
        }


def write_splits(con, out_tmp: Path, report: Report, options: BuildOptions) -> None:
    """One row per target review: the target and up to ``max_history`` earlier reviews.

    DuckDB writes each review's JSON once (as orjson would, see text_rules) and sorts; Python
    only concatenates slices of those bytes into rows (a review repeated in 50 histories is
    serialised once, not 50 times) while a second thread writes them.
    """
    _make_split_reviews(con, options)
    batch_rows = max(MIN_BATCH_ROWS, 2 * options.max_user_reviews)  # holds any one user whole
    with BackgroundWriter({split: out_tmp / f"{split}.jsonl" for split in SPLITS}) as writer:
        for batch in _ordered_reviews(con, batch_rows):
            for code, pieces in _rows(batch, options.max_history).items():
                writer.add(SPLITS[code - 1], pieces)
    lengths = _history_lengths(con, options)
    for split in SPLITS:
        report.rows_per_split[split] = lengths[split].rows
        report.history_length[split] = lengths[split].to_report()
    split_reviews = Tables.SPLIT_REVIEWS
    report.reviews_kept = count_rows(con, REVIEWS)
    report.users = con.execute(f"SELECT count(DISTINCT user_id) FROM {split_reviews}").fetchone()[0]
    report.items_used = con.execute(
        f"SELECT count(DISTINCT parent_asin) FROM {REVIEWS}"
    ).fetchone()[0]


def _make_split_reviews(con, options: BuildOptions) -> None:
    """Table ``Tables.SPLIT_REVIEWS``: every kept review with its item, its split code (0:
    profile, 1-3: SPLITS) and its position among the user's kept reviews."""
    first_valid = options.targets_per_user - options.validation_targets - options.test_targets + 1
    first_test = options.targets_per_user - options.test_targets + 1
    con.execute(
        f"""CREATE TABLE {Tables.SPLIT_REVIEWS} AS SELECT * EXCLUDE (pos),
                   -- 1-based among the kept reviews (the profile filter leaves gaps in pos)
                   row_number() OVER (PARTITION BY user_id ORDER BY pos) AS pos
            FROM (SELECT {REVIEWS}.*, i.item_title, i.item_description,
                         CASE WHEN target_index >= {first_test} THEN 3
                              WHEN target_index >= {first_valid} THEN 2
                              WHEN target_index > 0 THEN 1 ELSE 0 END::TINYINT AS split_code
                  FROM {REVIEWS} JOIN {Tables.ITEMS} i USING (parent_asin))"""
    )


def _history_lengths(con, options: BuildOptions) -> dict[str, HistoryLengths]:
    """Per split, the history lengths of its rows (all zero for a split without rows)."""
    per_code = con.execute(
        f"""SELECT split_code, count(*), min(h), max(h), sum(h),
                   list_sort(list(h))[count(*) // 2 + 1]
            FROM (SELECT split_code, least(pos - 1, {options.max_history}) AS h
                  FROM {Tables.SPLIT_REVIEWS} WHERE split_code > 0) GROUP BY 1"""
    ).fetchall()
    found = {SPLITS[code - 1]: HistoryLengths(*values) for code, *values in per_code}
    return {split: found.get(split, HistoryLengths(0, 0, 0, 0, 0)) for split in SPLITS}
