"""Stage 2 of the builder: DuckDB turns the Parquet columns into user rows and splits.

De-duplication, the iterative k-core, the target/profile split, joining item metadata and
building history lists, streaming and spilling to disk under a memory limit. DuckDB rather than
Polars: its out-of-core window functions and joins spill to disk by design, which the per-user
windows over 29.5M rows (Books) need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import orjson

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


_REVIEW_COLUMNS = (
    "item_id",
    "item_title",
    "item_description",
    "rating",
    "title",
    "text",
    "timestamp",
)


def _user_reviews(con, batch_rows: int = 50_000) -> Iterator[list[dict]]:
    """Each kept user's reviews in time order, one user at a time (bounded memory)."""
    reader = con.sql(
        f"""SELECT user_id, target_index, parent_asin AS item_id, {", ".join(_REVIEW_COLUMNS[1:])}
            FROM final ORDER BY user_id, pos"""
    ).to_arrow_reader(batch_rows)
    current: list[dict] = []
    for batch in reader:
        for row in batch.to_pylist():
            if current and row["user_id"] != current[0]["user_id"]:
                yield current
                current = []
            current.append(row)
    if current:
        yield current


def write_splits(con, out_tmp: Path, report: Report, o: BuildOptions) -> None:
    """One row per target review: the target and up to ``max_history`` earlier reviews."""
    con.execute(
        "CREATE TABLE final AS SELECT r.*, i.item_title, i.item_description FROM r JOIN items i USING (parent_asin)"
    )
    first_valid = o.targets_per_user - o.validation_targets - o.test_targets + 1
    first_test = o.targets_per_user - o.test_targets + 1
    lengths: dict[str, list[int]] = {split: [] for split in SPLITS}
    users = 0
    with contextlib.ExitStack() as stack:
        handles = {
            split: stack.enter_context(open(out_tmp / f"{split}.jsonl", "wb")) for split in SPLITS
        }
        for reviews in _user_reviews(con):
            users += 1
            public = [{k: r[k] for k in _REVIEW_COLUMNS} for r in reviews]
            for i, review in enumerate(reviews):
                t = review["target_index"]
                if t <= 0:
                    continue
                split = "test" if t >= first_test else "validation" if t >= first_valid else "train"
                history = public[max(0, i - o.max_history) : i]
                lengths[split].append(len(history))
                row = {"user_id": review["user_id"], "target": public[i], "history": history}
                handles[split].write(orjson.dumps(row) + b"\n")
    for split in SPLITS:
        values = sorted(lengths[split])
        report.rows_per_split[split] = len(values)
        report.history_length[split] = (
            {
                "min": float(values[0]),
                "median": float(values[len(values) // 2]),
                "mean": round(sum(values) / len(values), 2),
                "max": float(values[-1]),
            }
            if values
            else {}
        )
    report.reviews_kept = con.execute("SELECT count(*) FROM r").fetchone()[0]
    report.users = users
    report.items_used = con.execute("SELECT count(DISTINCT parent_asin) FROM r").fetchone()[0]
