"""What both stages of the builder share: options, the tables they hand over, the report."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from nextquill_common.cli_options import option

SPLITS = ("train", "validation", "test")
MAX_LOCATIONS_PER_REASON = 200  # bad-input locations listed in the report, per reason


def sql_text(value: str) -> str:
    """A SQL string literal (DuckDB's SET and macros take no parameters): quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def count_rows(con, table: str) -> int:
    """How many rows the DuckDB table ``table`` has."""
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


class BuildError(RuntimeError):
    """The input cannot be trusted or the result would be empty: nothing is written."""


class Tables:
    """The DuckDB tables through which the builder's stages hand data over, each named here.

    - ``REVIEW_LINES``, ``ITEM_LINES``: every input line with the reason it is dropped (or NULL)
      and the columns kept; made and read by stage 1 (``raw_lines``), dropped at its end.
    - ``REVIEWS``: the valid reviews; made by stage 1 (``raw_lines.read_reviews``); stage 2
      (``splits.select_users_and_targets``) deletes from it the reviews the protocol drops and
      numbers the rest (through ``NUMBERED_REVIEWS``, which replaces it); ``build`` checks that
      it is not empty; ``splits.write_splits`` reads it.
    - ``ITEMS``: the valid items, one per parent_asin; made by stage 1 (``raw_lines.read_items``),
      read by stage 2 (``splits``).
    - ``SPLIT_REVIEWS``: the kept reviews with their item, split and 1-based position per user;
      made and read by stage 2 (``splits.write_splits``), the source of the rows.
    """

    REVIEW_LINES = "review_lines"
    ITEM_LINES = "item_lines"
    REVIEWS = "reviews"
    NUMBERED_REVIEWS = "numbered_reviews"
    ITEMS = "items"
    SPLIT_REVIEWS = "split_reviews"


@dataclass
class BuildOptions:
    """Every threshold of the protocol; defaults are DPL's (Qiu et al. 2025)."""

    min_text_chars: int = option(
        "a review's text must have at least this many characters", default=200
    )
    min_description_chars: int = option(
        "an item's description: at least this many characters", default=100
    )
    max_description_chars: int = option(
        "an item's description: at most this many characters", default=2000
    )
    min_item_users: int = option(
        "k-core: an item needs reviews from at least this many users", default=8
    )
    min_user_reviews: int = option("k-core: a user needs at least this many reviews", default=18)
    max_user_reviews: int = option("k-core: users with more reviews are dropped", default=500)
    targets_per_user: int = option(
        "a user's last N reviews are targets; the rest the profile", default=10
    )
    validation_targets: int = option("of those, how many are validation targets", default=1)
    test_targets: int = option("of those, how many are test targets (the last)", default=1)
    min_profile_item_users: int = option(
        "after the split: a profile item needs at least this many users", default=5
    )
    min_profile_reviews: int = option(
        "after the split: a user needs this many profile reviews", default=8
    )
    max_history: int = option("earlier reviews carried by each row, the most recent", default=50)
    strict: bool = option("turn every skipped line into an error", default=False)
    memory_limit: str = option("DuckDB's memory limit; beyond it, it spills to disk", default="8GB")
    threads: int = option("DuckDB's worker threads (0: one per core)", default=0)
    show_progress: bool = option("no progress output", default=True, flag="--quiet")

    def thresholds(self) -> dict[str, Any]:
        """The protocol's thresholds (what shapes the rows; not how the build runs)."""
        how = {"strict", "memory_limit", "threads", "show_progress"}
        return {k: v for k, v in asdict(self).items() if k not in how}

    def targets_per_split(self) -> tuple[int, int, int]:
        """Target reviews per user that go to train, validation and test."""
        held_out = self.validation_targets + self.test_targets
        return self.targets_per_user - held_out, self.validation_targets, self.test_targets

    def check(self) -> None:
        """Raise BuildError naming every option that cannot give a build."""
        problems = [
            f"--{f.name.replace('_', '-')} must be >= 0 (got {getattr(self, f.name)})"
            for f in fields(self)
            if isinstance(getattr(self, f.name), int)
            and not isinstance(getattr(self, f.name), bool)
            and getattr(self, f.name) < 0
        ]
        if self.targets_per_split()[0] < 1:
            problems.append(
                f"--targets-per-user ({self.targets_per_user}) must exceed --validation-targets "
                f"+ --test-targets ({self.validation_targets + self.test_targets}): the train "
                "split needs at least one target per user"
            )
        if self.min_description_chars > self.max_description_chars:
            problems.append("--min-description-chars exceeds --max-description-chars")
        if self.min_user_reviews > self.max_user_reviews:
            problems.append(
                f"--min-user-reviews ({self.min_user_reviews}) exceeds --max-user-reviews "
                f"({self.max_user_reviews}): no user could survive the k-core"
            )
        if not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|[KMGT]B?)", self.memory_limit.strip(), re.I):
            problems.append(f"--memory-limit {self.memory_limit!r} is not a size like 8GB")
        if problems:
            raise BuildError("; ".join(problems))


@dataclass
class Report:
    """Statistics of one build; written as ``stats.json`` next to the splits."""

    reviews_read: int = 0
    reviews_kept: int = 0
    reviews_dropped: Counter = field(default_factory=Counter)
    items_read: int = 0
    items_kept: int = 0
    items_dropped: Counter = field(default_factory=Counter)
    bad_input: dict[str, list[str]] = field(default_factory=dict)
    users: int = 0
    items_used: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    history_length: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reviews_dropped"] = dict(sorted(self.reviews_dropped.items()))
        data["items_dropped"] = dict(sorted(self.items_dropped.items()))
        data["accounted"] = (
            self.reviews_kept + sum(self.reviews_dropped.values()) == self.reviews_read
        )
        return data
