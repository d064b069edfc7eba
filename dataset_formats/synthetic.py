"""Synthetic personalization data with planted preferences (known ground truth).

Each user has a consistent taste (a few opinion words and a favourite phrase) and a sign-off;
their reviews mix shared boilerplate with those words, so the history really predicts parts of
the target review and the causal effect has something to find. Output rows have the schema of
``nextquill-data build`` (user_id, target, history), split per user in time order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASTES = [
    ("luminous", "haunting", "the quiet ending stayed with me"),
    ("gritty", "relentless", "the pacing never lets up"),
    ("whimsical", "charming", "it made me smile on every page"),
    ("dense", "rigorous", "the footnotes alone are worth it"),
    ("cozy", "gentle", "perfect for a rainy afternoon"),
    ("bleak", "unflinching", "it does not look away"),
    ("lush", "sprawling", "the world building is enormous"),
    ("witty", "sharp", "the dialogue crackles throughout"),
]
SIGN_OFFS = [
    "Five stars from me.",
    "Highly recommended to my book club.",
    "Would buy again as a gift.",
    "Keeping this one on my shelf.",
    "Cannot wait for the sequel.",
    "Worth every penny.",
]
BOILERPLATE = [
    "The book arrived quickly and in good condition.",
    "The story follows a family over many years.",
    "The characters are well drawn and believable.",
    "The cover looks great and the print is clear.",
    "I read it over a long weekend.",
    "The plot has a few surprises along the way.",
]
NOUNS = [
    "river",
    "garden",
    "tower",
    "winter",
    "harbor",
    "forest",
    "mirror",
    "lantern",
    "orchard",
    "valley",
]
PLACES = ["the north", "the city", "the islands", "the old house", "the coast", "the mountains"]


@dataclass(frozen=True)
class SyntheticUser:
    user_id: str
    taste: tuple[str, str, str]
    sign_off: str


def _item(rng: random.Random, index: int) -> dict:
    noun, place = rng.choice(NOUNS), rng.choice(PLACES)
    return {
        "item_id": f"B{index:06d}",
        "item_title": f"The {noun.title()} of {place.title()}",
        "item_description": f"A novel about a {noun} in {place}. " + rng.choice(BOILERPLATE),
    }


def _review(rng: random.Random, user: SyntheticUser, item: dict, timestamp: int) -> dict:
    word_a, word_b, phrase = user.taste
    sentences = rng.sample(BOILERPLATE, 2)
    text = (
        f"{sentences[0]} I found it {word_a} and {word_b}, and {phrase}. "
        f"{sentences[1]} {user.sign_off}"
    )
    return {
        **item,
        "rating": float(rng.choice([4, 5])),
        "title": f"{word_a.title()} read",
        "text": text,
        "timestamp": timestamp,
    }


def synthetic_users(n_users: int, seed: int = 0) -> list[SyntheticUser]:
    rng = random.Random(seed)
    return [
        SyntheticUser(f"U{seed:02d}{i:05d}", rng.choice(TASTES), rng.choice(SIGN_OFFS))
        for i in range(n_users)
    ]


def synthetic_rows(
    n_users: int = 40, reviews_per_user: int = 12, seed: int = 0
) -> dict[str, list[dict]]:
    """Per-user temporal splits: all but the last two reviews train (one row each), then
    validation and test, each with every earlier review as history."""
    rng = random.Random(seed + 1)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    item_index = 0
    for user in synthetic_users(n_users, seed):
        reviews = []
        for k in range(reviews_per_user):
            item_index += 1
            reviews.append(
                _review(rng, user, _item(rng, item_index), 1_600_000_000_000 + k * 86_400_000)
            )
        first_target = max(1, reviews_per_user - 10)
        for t in range(first_target, reviews_per_user):
            split = (
                "test"
                if t == reviews_per_user - 1
                else "validation"
                if t == reviews_per_user - 2
                else "train"
            )
            splits[split].append(
                {"user_id": user.user_id, "target": reviews[t], "history": reviews[:t]}
            )
    return splits


def corpus_texts(rows: list[dict]) -> list[str]:
    """Every text of the rows, for training a tokenizer."""
    texts = []
    for row in rows:
        for review in [row["target"], *row["history"]]:
            texts.extend(
                [review["item_title"], review["item_description"], review["title"], review["text"]]
            )
    return texts
