"""The slice of Amazon Reviews 2023 (Books) shipped for the demo and the tests."""

from pathlib import Path

FOLDER = Path(__file__).parent
DEMO_REVIEWS = FOLDER / "Books_demo.jsonl.gz"
DEMO_META = FOLDER / "meta_Books_demo.jsonl.gz"
