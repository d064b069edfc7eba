"""The builder's output, byte for byte: the same rows and accounting as the stored digests of the
builder the DuckDB rewrite replaced, on an input with every kind of bad line
(tests/builder_digest_input.py), whatever the batch boundaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_formats.build import BuildOptions, build

# sha256 of train/validation/test.jsonl and of stats.json (without timings, keys sorted) on
# tests/builder_digest_input.py's input, taken from the Python stage-1 builder (commit b61b230).
DIGESTS = {
    "defaults": {
        "train": "281a427edd1d07ebc062d5fa3269564f5025fa3ea9fe98d436926da11a3d6eca",
        "validation": "524d06d5b8cb858b1b01fb105650f7a76c4757980c322dc247be869f53934f71",
        "test": "4cbf29db5713dbcb39b8b387a76c1ede4f595d8b5115acba9dd8dc99f5ad003e",
        "stats": "57c022abd2665f50821a4a9a9a10a6c672b2c9ff8f3e153f3f2e7d277d46329e",
    },
    "tight": {
        "train": "f0d0a3f2681f8b3fd7cfa1e45ce9d47c033e754fc7fcb5e9d281e6687429c892",
        "validation": "322f4291b5fa6c32452860b73f84c57c6256467f55bc33a1c72ad3c29b7f2f44",
        "test": "01c61429a1818aa07f0c5c88327e29dbfc8ed2b57ad6d4e933bfca4891126673",
        "stats": "1c0e68fe844016a62d6e8c99b4ab53ffc54496e115a8c69b3a3aa55097769195",
    },
    "profile_filter": {  # profile_item_rare drops reviews between a user's kept ones
        "train": "2baa358a05f0ad07cf94fe7d30e19c26043038c7e0649367627053b41aeacdeb",
        "validation": "6a85926a1cdee2da5f77a0bdc142461755b06fbace74c6e26737426253a7aced",
        "test": "a31a6dba2bd678930b93ee498ad9cb67d05005dd24cf69218e58412affdabbd4",
        "stats": "b7544bc2d479dc69c26ca53b4d9a16744a4a3da518d22487e2cc85130149284a",
    },
}
DIGEST_OPTIONS = {
    "defaults": BuildOptions(show_progress=False),
    "tight": BuildOptions(
        show_progress=False,
        min_item_users=22,
        max_history=5,
        min_profile_item_users=9,
        targets_per_user=6,
        validation_targets=2,
        min_profile_reviews=12,
    ),
    "profile_filter": BuildOptions(
        show_progress=False,
        min_item_users=10,
        min_profile_item_users=13,
        min_profile_reviews=12,
        max_history=30,
    ),
}


def output_digests(out: Path) -> dict[str, str]:
    import hashlib

    stats = json.loads((out / "stats.json").read_text())
    stats.pop("seconds"), stats.pop("stage_seconds")
    digests = {
        split: hashlib.sha256((out / f"{split}.jsonl").read_bytes()).hexdigest()
        for split in ("train", "validation", "test")
    }
    digests["stats"] = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()
    return digests


@pytest.mark.parametrize("options", list(DIGESTS))
def test_output_matches_the_stored_digest_of_the_python_builder(tmp_path, options):
    """Same bytes and the same accounting as the builder the rewrite replaced, on an input with
    every kind of bad line, Unicode whitespace, control characters and odd numbers."""
    from tests.builder_digest_input import write_digest_input

    first, second, meta = write_digest_input(tmp_path / "raw")
    build([first, second], [meta], tmp_path / "out", DIGEST_OPTIONS[options])
    assert output_digests(tmp_path / "out") == DIGESTS[options]


def test_rows_are_the_same_when_users_cross_batch_boundaries(tmp_path, monkeypatch):
    """Stage 2 reads the sorted reviews in batches that end where a user ends; with the smallest
    batches (many users carried over), and DuckDB on one thread, the bytes are the digest's."""
    from dataset_formats.build import splits
    from tests.builder_digest_input import write_digest_input

    monkeypatch.setattr(splits, "MIN_BATCH_ROWS", 1)
    options = BuildOptions(
        **{**DIGEST_OPTIONS["defaults"].__dict__, "max_user_reviews": 60, "threads": 1}
    )
    first, second, meta = write_digest_input(tmp_path / "raw")
    build([first, second], [meta], tmp_path / "out", options)  # batches of 120 reviews
    assert output_digests(tmp_path / "out") == DIGESTS["defaults"]
