"""The raw demo files (Amazon Reviews 2023 schema, Books) shipped for the demo and the tests.

They are synthetic users made by ``synthetic_raw_amazon(DEMO_USERS, seed=DEMO_SEED,
style=DEMO_STYLE)`` (a test checks that the generator still makes exactly these files), so
each user's planted words, the generator's truth, are known: ``demo_users()``.
"""

from pathlib import Path

from dataset_formats.build.synthetic import Style, SyntheticUser, synthetic_users

FOLDER = Path(__file__).parent
DEMO_REVIEWS = FOLDER / "Books_demo.jsonl.gz"
DEMO_META = FOLDER / "meta_Books_demo.jsonl.gz"
DEMO_USERS, DEMO_SEED = 200, 0
# Made-up words from the pool the shipped theta_0 never saw, in 80% of a user's reviews.
DEMO_STYLE = Style(words="heldout", recurrence=0.8, title_names_taste=False)


def demo_users() -> dict[str, SyntheticUser]:
    """The demo users' planted preferences, by user id."""
    return {u.user_id: u for u in synthetic_users(DEMO_USERS, DEMO_SEED, DEMO_STYLE)}
