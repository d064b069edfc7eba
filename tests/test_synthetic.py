"""The synthetic users' generator: word pools, styles, the planted truth, the shipped demo files."""

from __future__ import annotations

import re

import pytest

from dataset_formats.build.synthetic import (
    BOILERPLATE,
    PLAIN_TITLES,
    WORD_POOLS,
    Style,
    SyntheticUser,
    synthetic_raw_amazon,
    synthetic_users,
    word_pool,
)


def test_word_pools_are_disjoint_made_up_words_of_the_stated_sizes():
    pools = {name: word_pool(name) for name in WORD_POOLS}
    assert {name: len(set(words)) for name, words in pools.items()} == WORD_POOLS
    assert not set(pools["train"]) & set(pools["heldout"])
    assert all(re.fullmatch(r"([bdfgklmnprstvz][aeiou]){2}", w) for w in pools["heldout"])
    assert not {w for words in pools.values() for w in words} & {
        w.lower().strip(".,") for sentence in BOILERPLATE for w in sentence.split()
    }
    with pytest.raises(ValueError, match="no word pool 'mine'"):
        word_pool("mine")
    with pytest.raises(ValueError, match="no word pool"):
        Style(words="mine")
    with pytest.raises(ValueError, match="recurrence must be in"):
        Style(recurrence=0)


def test_users_of_a_pool_have_six_distinct_words_of_that_pool():
    users = synthetic_users(50, seed=3, style=Style(words="heldout"))
    pool = set(word_pool("heldout"))
    for user in users:
        words = " ".join(user.planted).split()
        assert len(set(words)) == 6 and set(words) <= pool
        assert user.planted == (*user.taste, user.sign_off.removeprefix("Signed ").rstrip("."))
        assert (
            user.taste_sentence()
            == f"I found it {words[0]}, even {words[1]}, truly {user.taste[2]}."
        )
    assert synthetic_users(50, seed=3, style=Style(words="heldout")) == users  # deterministic


@pytest.mark.parametrize("recurrence", [0.3, 0.8])
def test_recurrence_is_the_share_of_reviews_with_the_taste_and_sign_off(recurrence):
    style = Style(words="heldout", recurrence=recurrence, title_names_taste=False)
    reviews, _ = synthetic_raw_amazon(100, seed=5, style=style)
    users = {u.user_id: u for u in synthetic_users(100, seed=5, style=style)}
    with_taste = [users[r["user_id"]].taste[2] in r["text"] for r in reviews]
    with_sign_off = [users[r["user_id"]].sign_off in r["text"] for r in reviews]
    assert abs(sum(with_taste) / len(reviews) - recurrence) < 0.03
    assert abs(sum(with_sign_off) / len(reviews) - recurrence) < 0.03
    assert min(len(r["text"]) for r in reviews) > 200  # the protocol keeps every review
    assert {r["title"] for r in reviews} <= set(PLAIN_TITLES)


def test_a_title_that_names_the_taste_holds_its_words_as_the_text_spells_them():
    style = Style(words="heldout", title_names_taste=True)
    user = synthetic_users(1, seed=1, style=style)[0]
    reviews, _ = synthetic_raw_amazon(20, seed=1, style=style)
    title = next(r["title"] for r in reviews if r["user_id"] == user.user_id)
    assert [word in title for word in user.planted] == [True, True, True, False]


def test_planted_spans_and_which_of_them_only_the_history_predicts():
    inventory = SyntheticUser(
        "u", ("gritty", "relentless", "the pacing never lets up"), "Worth it."
    )
    text = "I found it gritty and relentless, and the pacing never lets up. Worth it."
    assert [(text[s:e], only) for s, e, only in inventory.planted_spans(text)] == [
        ("gritty", False),  # the review title names it, and it implies the rest
        ("relentless", False),
        ("the pacing never lets up", False),
        ("Worth it.", True),
    ]
    own = SyntheticUser(
        "v", ("kabo", "lema", "sino pufa"), "Signed rado veki.", Style("heldout", 1.0, False)
    )
    text = "I found it kabo, even lema, truly sino pufa. Signed rado veki."
    assert own.taste_sentence() in text
    assert [(text[s:e], only) for s, e, only in own.planted_spans(text)] == [
        ("kabo", True),
        ("lema", True),
        ("sino pufa", True),
        ("rado veki", True),
    ]
    assert own.planted_spans("I found it kabon and xlema.") == []  # whole words only


def test_the_shipped_demo_files_are_what_the_generator_makes_for_the_demo_users():
    from dataset_formats.demo_data import (
        DEMO_META,
        DEMO_REVIEWS,
        DEMO_SEED,
        DEMO_STYLE,
        DEMO_USERS,
        demo_users,
    )
    from nextquill_common.jsonl import read_jsonl

    reviews, meta = synthetic_raw_amazon(DEMO_USERS, seed=DEMO_SEED, style=DEMO_STYLE)
    assert read_jsonl(DEMO_REVIEWS) == reviews and read_jsonl(DEMO_META) == meta
    users = demo_users()
    assert {r["user_id"] for r in reviews} == set(users)
