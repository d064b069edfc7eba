"""Stage 2 of the builder: DuckDB turns the Parquet columns into user rows and splits.

De-duplication, the iterative k-core, the target/profile split, joining item metadata and
building history lists, streaming and spilling to disk under a memory limit. DuckDB rather than
Polars: its out-of-core window functions and joins spill to disk by design, which the per-user
windows over 29.5M rows (Books) need.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Queue

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
    """Files written by a background thread in large chunks, so that building the next rows
    overlaps the (slower) writing of the last ones. An error of the writer is raised here."""

    def __init__(self, paths: dict[str, Path], chunk_bytes: int = 8 << 20):
        self.paths, self.chunk_bytes = paths, chunk_bytes
        self.pending: dict[str, list[bytes]] = {name: [] for name in paths}
        self.pending_bytes = dict.fromkeys(paths, 0)
        self.queue: Queue = Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="nextquill-write")

    def _run(self) -> None:
        try:
            with contextlib.ExitStack() as stack:
                handles = {
                    name: stack.enter_context(open(path, "wb")) for name, path in self.paths.items()
                }
                while (item := self.queue.get()) is not None:
                    handles[item[0]].write(item[1])
        except BaseException as error:  # raised in the building thread
            self.error = error
            while self.queue.get() is not None:  # keep the producer from blocking
                pass

    def add(self, name: str, data: bytes) -> None:
        self.pending[name].append(data)
        self.pending_bytes[name] += len(data)
        if self.pending_bytes[name] >= self.chunk_bytes:
            self._hand_over(name)

    def _hand_over(self, name: str) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((name, b"".join(self.pending[name])))
        self.pending[name], self.pending_bytes[name] = [], 0

    def __enter__(self) -> BackgroundWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for name in self.paths:
                    self._hand_over(name)
        finally:
            self.queue.put(None)
            self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def _ordered_reviews(con, batch_rows: int = 65_536) -> Iterator[tuple[bytes, bytes, int]]:
    """(user id as JSON, review as JSON, target index) of every kept review, by user and time."""
    reader = con.sql(
        """SELECT encode(nq_string_json(user_id)), encode(nq_review_json(to_json({
                  item_id: parent_asin, item_title: item_title,
                  item_description: item_description, rating: rating, title: title,
                  text: text, timestamp: timestamp}), rating)), target_index
           FROM final ORDER BY user_id, pos"""
    ).to_arrow_reader(batch_rows)
    for batch in reader:
        yield from zip(*(column.to_pylist() for column in batch.columns), strict=True)


def write_splits(con, out_tmp: Path, report: Report, o: BuildOptions) -> None:
    """One row per target review: the target and up to ``max_history`` earlier reviews.

    DuckDB writes each review's JSON once (as orjson would, see text_rules) and sorts; Python
    only concatenates those bytes into rows, so a review repeated in 50 histories is serialised
    once, not 50 times.
    """
    con.execute(
        "CREATE TABLE final AS SELECT r.*, i.item_title, i.item_description "
        "FROM r JOIN items i USING (parent_asin)"
    )
    first_valid = o.targets_per_user - o.validation_targets - o.test_targets + 1
    first_test = o.targets_per_user - o.test_targets + 1
    with BackgroundWriter({split: out_tmp / f"{split}.jsonl" for split in SPLITS}) as writer:
        current_user, history = None, []
        for user, review, target_index in _ordered_reviews(con):
            if user != current_user:
                current_user, history = user, []
            if target_index > 0:
                split = (
                    "test"
                    if target_index >= first_test
                    else "validation"
                    if target_index >= first_valid
                    else "train"
                )
                shown = b",".join(history[max(0, len(history) - o.max_history) :])
                writer.add(
                    split, b'{"user_id":%b,"target":%b,"history":[%b]}\n' % (user, review, shown)
                )
            history.append(review)
    lengths = con.execute(
        f"""SELECT CASE WHEN target_index >= {first_test} THEN 'test'
                        WHEN target_index >= {first_valid} THEN 'validation' ELSE 'train' END,
                   count(*), min(h), max(h), sum(h), list_sort(list(h))[count(*) // 2 + 1]
            FROM (SELECT target_index, least(pos - 1, {o.max_history}) AS h
                  FROM final WHERE target_index > 0) GROUP BY 1"""
    ).fetchall()
    by_split = {
        split: (n, low, high, total, median) for split, n, low, high, total, median in lengths
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
