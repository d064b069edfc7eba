"""Synthetic personalization data with planted preferences (known ground truth).

Each user has a consistent taste (a few opinion words and a favourite phrase) and a sign-off;
their reviews mix shared boilerplate with those words, so the history really predicts parts of
the target review and the causal effect has something to find. A ``Style`` says where the
personal words come from (a small inventory shared by everyone, or made-up words drawn per user
from a large pool, which only the user's own history predicts), how often they recur, and
whether a review's title gives the taste away.

- ``synthetic_rows``: user rows in the schema of ``nextquill-data build`` (fast, for tests).
- ``synthetic_raw_amazon``: the same kind of users as raw Amazon Reviews 2023 files (reviews +
  item metadata, every field of the released schema), sized so that the DPL protocol keeps
  them; the shipped demo data and the builder benchmarks are made with it.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

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
PLAIN_TITLES = ["Good read", "A fine read", "My thoughts", "Worth reading", "Read it"]
INVENTORY = "inventory"
SIGN_OFF_FRAME = "Signed "
# Made-up two-syllable words (consonant, vowel, consonant, vowel) split into disjoint pools:
# theta_0 is trained on users of the first and measured on users of the second.
WORD_POOLS = {"train": 3000, "heldout": 1000}
# The made-up words' letters (the pools: every consonant-vowel-consonant-vowel word of them).
CONSONANTS, VOWELS, _POOL_SHUFFLE_SEED = "bdfgklmnprstvz", "aeiou", 2024


@cache
def word_pool(name: str) -> tuple[str, ...]:
    """The words of pool ``name`` (one of ``WORD_POOLS``); no word is in two pools."""
    if name not in WORD_POOLS:
        raise ValueError(f"no word pool {name!r}; the pools are {sorted(WORD_POOLS)}")
    words = sorted(
        c1 + v1 + c2 + v2
        for c1 in CONSONANTS
        for v1 in VOWELS
        for c2 in CONSONANTS
        for v2 in VOWELS
    )
    random.Random(_POOL_SHUFFLE_SEED).shuffle(words)
    start = 0
    for pool, size in WORD_POOLS.items():
        if pool == name:
            return tuple(words[start : start + size])
        start += size
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Style:
    """How a population's personal words are made (the defaults: the original generator)."""

    words: str = field(
        default=INVENTORY,
        metadata={
            "help": "where each user's taste words and sign-off come from: 'inventory' (a few "
            "shared by everyone) or a pool of made-up words drawn per user",
            "choices": [INVENTORY, *WORD_POOLS],
        },
    )
    recurrence: float = field(
        default=1.0,
        metadata={"help": "the share of a user's reviews that carry their taste and sign-off"},
    )
    title_names_taste: bool = field(
        default=True,
        metadata={
            "flag": "--plain-titles",
            "help": "review titles that do not name the user's first taste word",
        },
    )

    def __post_init__(self) -> None:
        if self.words != INVENTORY:
            word_pool(self.words)
        if not 0.0 < self.recurrence <= 1.0:
            raise ValueError(f"recurrence must be in (0, 1], got {self.recurrence}")


@dataclass(frozen=True)
class SyntheticUser:
    """A user's planted preferences: ``taste`` is (opinion word, opinion word, phrase);
    ``planted`` the four spans a review of theirs may hold (the taste's three and the sign-off;
    with made-up words, the sign-off's own words without its shared frame)."""

    user_id: str
    taste: tuple[str, str, str]
    sign_off: str
    style: Style = Style()
    planted: tuple[str, str, str, str] = ()

    def __post_init__(self) -> None:
        if not self.planted:
            own_words = self.sign_off.removeprefix(SIGN_OFF_FRAME).rstrip(".")
            sign_off = self.sign_off if self.style.words == INVENTORY else own_words
            object.__setattr__(self, "planted", (*self.taste, sign_off))

    def taste_sentence(self) -> str:
        """The sentence that carries the taste. Made-up words each follow a word used nowhere
        else ("even", "truly", and "Signed" in the sign-off), so that the place to copy from is
        plain to a model that matches one token back, as a two-layer transformer does."""
        word_a, word_b, phrase = self.taste
        if self.style.words == INVENTORY:
            return f"I found it {word_a} and {word_b}, and {phrase}."
        return f"I found it {word_a}, even {word_b}, truly {phrase}."

    def personal_spans(self) -> list[tuple[str, bool]]:
        """(text, history_only) of each planted span. A title that names the taste puts its
        spans in the prompt (with the inventory it names the first word, which implies the
        rest), so then only the sign-off is history-only."""
        in_prompt = self.style.title_names_taste
        return [(text, index == 3 or not in_prompt) for index, text in enumerate(self.planted)]

    def planted_spans(self, text: str) -> list[tuple[int, int, bool]]:
        """(start, end, history_only) character spans of this user's planted words in ``text``
        (the first occurrence of each)."""
        spans = []
        for needle, history_only in self.personal_spans():
            found = re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", text)
            if found:
                spans.append((found.start(), found.end(), history_only))
        return spans

    def review_title(self, rng: random.Random) -> str:
        if not self.style.title_names_taste:
            return rng.choice(PLAIN_TITLES)
        if self.style.words == INVENTORY:
            return f"{self.taste[0].title()} read"
        word_a, word_b, phrase, _ = self.planted
        return f"{word_a} and {word_b}: {phrase}"  # as the review text spells them


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
    """A review: shared boilerplate, the taste sentence and the sign-off (each kept with
    probability ``recurrence``; a left-out one is replaced by boilerplate, so the length holds)."""
    recurrence = user.style.recurrence
    keep_taste = recurrence >= 1.0 or rng.random() < recurrence
    keep_sign_off = recurrence >= 1.0 or rng.random() < recurrence
    sentences = rng.sample(BOILERPLATE, n_boilerplate + (not keep_taste) + (not keep_sign_off))
    opening = [f"I picked up {item_title} last month."] if item_title else []
    taste = [user.taste_sentence()] if keep_taste else []
    return " ".join(
        [
            *opening,
            sentences[0],
            *taste,
            *sentences[1 : n_boilerplate + (not keep_taste)],
            *([user.sign_off] if keep_sign_off else sentences[n_boilerplate + (not keep_taste) :]),
        ]
    )


def _review(rng: random.Random, user: SyntheticUser, item: dict, timestamp: int) -> dict:
    text = _review_text(rng, user)
    return {
        **item,
        "rating": float(rng.choice([4, 5])),
        "title": user.review_title(rng),
        "text": text,
        "timestamp": timestamp,
    }


def synthetic_users(n_users: int, seed: int = 0, style: Style = Style()) -> list[SyntheticUser]:
    """The population's users and their planted preferences (the generator's truth)."""
    rng = random.Random(seed)
    if style.words == INVENTORY:
        return [
            SyntheticUser(f"U{seed:02d}{i:05d}", rng.choice(TASTES), rng.choice(SIGN_OFFS), style)
            for i in range(n_users)
        ]
    pool = word_pool(style.words)
    users = []
    for i in range(n_users):
        a, b, c, d, e, f = rng.sample(pool, 6)
        users.append(
            SyntheticUser(
                f"U{seed:02d}{i:05d}", (a, b, f"{c} {d}"), f"{SIGN_OFF_FRAME}{e} {f}.", style
            )
        )
    return users


def synthetic_rows(
    n_users: int = 40, reviews_per_user: int = 12, seed: int = 0, style: Style = Style()
) -> dict[str, list[dict]]:
    """Per-user temporal splits: all but the last two reviews train (one row each), then
    validation and test, each with every earlier review as history."""
    rng = random.Random(seed + 1)
    splits: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    item_index = 0
    for user in synthetic_users(n_users, seed, style):
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
    n_users: int = 200,
    reviews_per_user: int = 22,
    reviews_per_item: int = 16,
    seed: int = 0,
    style: Style = Style(),
) -> tuple[list[dict], list[dict]]:
    """(review records, item metadata records) in the raw Amazon Reviews 2023 schema.

    Items are shared so that each has about ``reviews_per_item`` reviewers (the DPL k-core needs
    8); review texts have over 200 characters and descriptions 100-2000, as the protocol wants.
    """
    rng = random.Random(seed + 7)
    # at least one item per review of a user: every user writes reviews_per_user reviews
    n_items = max(reviews_per_user, n_users * reviews_per_user // reviews_per_item)
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
    for user in synthetic_users(n_users, seed, style):
        items = rng.sample(range(n_items), min(reviews_per_user, n_items))
        for k, index in enumerate(items):
            asin = meta[index]["parent_asin"]
            reviews.append(
                {
                    "rating": float(rng.choice([4, 5])),
                    "title": user.review_title(rng),
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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Items are shared within blocks of users, so every item is reviewed enough.
    users_per_block = 500
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
