"""Synthetic personalization data with planted preferences (known ground truth).

Each user has a consistent taste (a few opinion words and a favourite phrase) and a sign-off;
their reviews mix shared boilerplate with those words, so the history really predicts parts of
the target review and the causal effect has something to find.

- ``synthetic_rows``: user rows in the schema of ``nextquill-data build`` (fast, for tests).
- ``synthetic_raw_amazon``: the same kind of users as raw Amazon Reviews 2023 files (reviews +
  item metadata, every field of the released schema), sized so that the DPL protocol keeps
  them; the shipped demo data and the builder benchmarks are made with it.
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


def _review_text(
    rng: random.Random, user: SyntheticUser, n_boilerplate: int = 2, item_title: str = ""
) -> str:
    word_a, word_b, phrase = user.taste
    sentences = rng.sample(BOILERPLATE, n_boilerplate)
    opening = [f"I picked up {item_title} last month."] if item_title else []
    return " ".join(
        [
            *opening,
            sentences[0],
            f"I found it {word_a} and {word_b}, and {phrase}.",
            *sentences[1:],
            user.sign_off,
        ]
    )


def _review(rng: random.Random, user: SyntheticUser, item: dict, timestamp: int) -> dict:
    word_a = user.taste[0]
    text = _review_text(rng, user)
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


def synthetic_raw_amazon(
    n_users: int = 200, reviews_per_user: int = 22, reviews_per_item: int = 16, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """(review records, item metadata records) in the raw Amazon Reviews 2023 schema.

    Items are shared so that each has about ``reviews_per_item`` reviewers (the DPL k-core needs
    8); review texts have over 200 characters and descriptions 100-2000, as the protocol wants.
    """
    rng = random.Random(seed + 7)
    n_items = max(1, n_users * reviews_per_user // reviews_per_item)
    meta = []
    for index in range(n_items):
        item = _item(rng, index)
        meta.append(
            {
                "main_category": "Books",
                "title": item["item_title"],
                "subtitle": "Paperback",
                "author": {"name": f"Author {index % 37}"},
                "average_rating": round(rng.uniform(3, 5), 1),
                "rating_number": rng.randint(10, 5000),
                "features": [],
                "description": [
                    "Product Description",
                    item["item_description"],
                    *rng.sample(BOILERPLATE, 2),
                ],
                "price": round(rng.uniform(5, 40), 2),
                "images": [],
                "videos": [],
                "store": "Demo Press",
                "categories": ["Books", "Literature & Fiction"],
                "details": {"Language": "English"},
                "parent_asin": item["item_id"],
                "bought_together": None,
            }
        )
    reviews = []
    for user in synthetic_users(n_users, seed):
        items = rng.sample(range(n_items), min(reviews_per_user, n_items))
        for k, index in enumerate(items):
            asin = meta[index]["parent_asin"]
            reviews.append(
                {
                    "rating": float(rng.choice([4, 5])),
                    "title": f"{user.taste[0].title()} read",
                    "text": _review_text(rng, user, 3, meta[index]["title"]),
                    "images": [],
                    "asin": asin,
                    "parent_asin": asin,
                    "user_id": user.user_id,
                    "timestamp": 1_600_000_000_000 + k * 86_400_000 + rng.randint(0, 3_600_000),
                    "helpful_vote": rng.randint(0, 5),
                    "verified_purchase": True,
                }
            )
    rng.shuffle(reviews)  # released files are not grouped by user
    return reviews, meta


def write_synthetic_raw(
    folder, n_reviews: int, reviews_per_user: int = 22, reviews_per_item: int = 16, seed: int = 0
) -> tuple[int, int]:
    """Stream about ``n_reviews`` raw reviews (and their items) to gzipped JSONL in ``folder``,
    user by user, in bounded memory (for builder benchmarks and the memory test)."""
    import gzip
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    users_per_block = (
        500  # items are shared within blocks of users, so every item is reviewed enough
    )
    n_users = max(1, n_reviews // reviews_per_user)
    written = items = 0
    with (
        gzip.open(folder / "reviews.jsonl.gz", "wt", compresslevel=1) as rev,
        gzip.open(folder / "meta.jsonl.gz", "wt", compresslevel=1) as met,
    ):
        for block, start in enumerate(range(0, n_users, users_per_block)):
            size = min(users_per_block, n_users - start)
            reviews, meta = synthetic_raw_amazon(
                size, reviews_per_user, reviews_per_item, seed=seed * 100_003 + block
            )
            prefix = f"b{block}-"
            for m in meta:
                m["parent_asin"] = prefix + m["parent_asin"]
                met.write(json.dumps(m) + "\n")
            for r in reviews:
                r["parent_asin"] = r["asin"] = prefix + r["parent_asin"]
                r["user_id"] = prefix + r["user_id"]
                rev.write(json.dumps(r) + "\n")
            written, items = written + len(reviews), items + len(meta)
    return written, items
