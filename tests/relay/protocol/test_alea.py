"""Tests for relay.protocol.alea: every vector of reference ddp-protocol.md section 4.5."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.protocol.alea import (
    HEX_CHARS,
    SECRET_CHARS,
    UNMISTAKABLE_CHARS,
    Alea,
    RandomStream,
    collection_stream_name,
    make_rpc_seed,
    random_id,
)

PROPERTY = settings(max_examples=100, deadline=None)

# ---------------------------------------------------------------------------------------------
# Reference 4.5 vectors
# ---------------------------------------------------------------------------------------------

BOOKS_IDS = {
    "seed-one": [
        "4dPFpqRpxfSYSecNG",
        "oXSsgcrLkfq9miXXL",
        "GGo6D3qG3AA4k3GqP",
        "Pvautwh5BoLzstYSJ",
        "9tRQMJjZErvAnKcXJ",
    ],
    "abc": [
        "HPRPFNS53Rhi6vc9F",
        "zRsJopjPfogKyjsJG",
        "yS7TYybcpKf7aezyR",
        "zsXBjBtXjqLSk24Sd",
        "LLDBoXKMmGDbaztkh",
    ],
    "xyz123": [
        "crrcirFirXYyyxHMW",
        "2xixBR7aJqEfXcpTu",
        "rsAG3TH2ygSTAdnha",
        "qg2RKHXiPJTkXTeLT",
        "veAqLvrWmoZa2Erbu",
    ],
}


@pytest.mark.parametrize("seed", sorted(BOOKS_IDS))
def test_first_five_ids_of_collection_books(seed: str) -> None:
    generator = Alea(seed, "/collection/books")
    assert [generator.id() for _ in range(5)] == BOOKS_IDS[seed]


@pytest.mark.parametrize("seed", sorted(BOOKS_IDS))
def test_random_stream_draws_the_same_ids(seed: str) -> None:
    stream = RandomStream(seed)
    # Each call continues the cached sequence, as successive inserts in one method do.
    ids = [stream.sequence(collection_stream_name("books")).id() for _ in range(5)]
    assert ids == BOOKS_IDS[seed]


def test_other_collection_stream() -> None:
    generator = Alea("seed-one", "/collection/authors")
    assert [generator.id(), generator.id()] == ["Nieidi5LRhyBY8sz7", "XQDBCJniMbucXXQsr"]


def test_mongo_object_id_hex_strings() -> None:
    generator = Alea("abc", "/collection/books")
    assert [generator.hex_string(24), generator.hex_string(24)] == [
        "4666366106ab1e923f6d4ccb",
        "6aca5fbd44f7178f99d5a189",
    ]


def test_secret() -> None:
    secret = Alea("abc", "/collection/books").secret(43)
    assert secret == "rzBypyBebBRSf6Mip_B3sYZTyPYQu-U3tr-CgDH9KL0"
    assert Alea("abc", "/collection/books").secret() == secret


def test_make_rpc_seed() -> None:
    stream = RandomStream("abc")
    assert make_rpc_seed(stream, "foo") == "5e596937690a30934fc2"
    assert make_rpc_seed(stream, "foo") == "5bba24a88de693522c19"
    assert Alea("abc", "/rpc/foo").hex_string(20) == "5e596937690a30934fc2"


def test_meteor_own_vector_for_seed_zero() -> None:
    generator = Alea(0)
    assert [generator.id() for _ in range(4)] == [
        "cp9hWvhg8GSvuZ9os",
        "3f3k6Xo7rrHCifQhR",
        "shxDnjWWmnKPEoLhM",
        "6QTjB8C5SEqhmz4ni",
    ]


def test_django_ddp_vector_for_mixed_seeds() -> None:
    generator = Alea("my", 3, "seeds")
    assert [generator.id() for _ in range(5)] == [
        "JYRduBwQtjpeCkqP7",
        "HLxYtpZBtSain84zj",
        "s9XrbWaDC4yCL5NCW",
        "SCiymgNnZpwda9vSH",
        "hui3ThSoZrFrdFDTT",
    ]


FRACTIONS: list[tuple[tuple[object, ...], list[float]]] = [
    (
        ("seed-one",),
        [
            0.37564913369715214,
            0.4910391822922975,
            0.9464784921146929,
            0.3783920812420547,
            0.704393618972972,
        ],
    ),
    (
        ("abc",),
        [
            0.4795641906093806,
            0.32567206234671175,
            0.8431053028907627,
            0.16420672414824367,
            0.3870483604259789,
        ],
    ),
    (
        ("abc", "/collection/books"),
        [
            0.2731916862539947,
            0.3943631015717983,
            0.4251586322207004,
            0.38563893525861204,
            0.24354157829657197,
        ],
    ),
    ((0,), [0.5945264333859086, 0.8065849216654897, 0.12979769078083336]),
]


@pytest.mark.parametrize(("seeds", "expected"), FRACTIONS, ids=lambda v: repr(v)[:30])
def test_fractions_bit_for_bit(seeds: tuple[object, ...], expected: list[float]) -> None:
    generator = Alea(*seeds)
    assert [generator.fraction() for _ in expected] == expected


@pytest.mark.parametrize(
    ("seeds", "state"),
    [
        (
            ("seed-one", "/collection/books"),
            (0.7332388870418072, 0.30267919413745403, 0.003058549715206027),
        ),
        (("abc",), (0.7014946076087654, 0.886867344379425, 0.2560794872697443)),
        (("my", 3, "seeds"), (0.23922116006724536, 0.6147655111271888, 0.3493568613193929)),
    ],
)
def test_state_after_seeding(seeds: tuple[object, ...], state: tuple[float, ...]) -> None:
    assert Alea(*seeds).state == state


# ---------------------------------------------------------------------------------------------
# Seeds are formatted as JS toString() and hashed per UTF-16 code unit
# ---------------------------------------------------------------------------------------------


def test_seeds_use_js_to_string() -> None:
    assert Alea(3).state == Alea("3").state
    assert Alea(3.0).state == Alea("3").state
    assert Alea(1.5).state == Alea("1.5").state
    assert Alea(1e21).state == Alea("1e+21").state
    assert Alea(True).state == Alea("true").state
    assert Alea(False).state == Alea("false").state
    # Two seeds are two Mash inputs, not one concatenated string.
    assert Alea("ab", "c").state != Alea("abc").state


def test_non_bmp_seed_is_hashed_as_two_surrogates() -> None:
    # Expected values come from an independent JS port run in Node, where strings are UTF-16.
    generator = Alea("a\U0001f600b")
    assert generator.fraction() == 0.11854887870140374
    assert Alea("\U0010ffff" * 5, "z").fraction() == 0.8557934747077525
    assert Alea("\ud800x").fraction() == 0.9018735103309155


@pytest.mark.parametrize("seed", [None, [1], {"a": 1}, b"x"])
def test_unsupported_seed_types(seed: object) -> None:
    with pytest.raises(TypeError):
        Alea(seed)


def test_no_seed_is_refused() -> None:
    with pytest.raises(ValueError):
        Alea()


def test_choice_needs_an_alphabet() -> None:
    with pytest.raises(ValueError):
        Alea("x").choice("")


@PROPERTY
@given(st.lists(st.text(max_size=8), min_size=1, max_size=3), st.integers(0, 40))
def test_outputs_use_their_alphabets(seeds: list[str], n: int) -> None:
    generator = Alea(*seeds)
    fraction = generator.fraction()
    assert 0.0 <= fraction < 1.0
    assert len(generator.id(n)) == n
    assert set(generator.id(n)) <= set(UNMISTAKABLE_CHARS)
    assert set(generator.secret(n)) <= set(SECRET_CHARS)
    assert set(generator.hex_string(n)) <= set(HEX_CHARS)
    assert generator.choice("q") == "q"


@PROPERTY
@given(st.lists(st.text(max_size=8), min_size=1, max_size=3))
def test_equal_seeds_give_equal_sequences(seeds: list[str]) -> None:
    assert Alea(*seeds).id(30) == Alea(*seeds).id(30)


# ---------------------------------------------------------------------------------------------
# RandomStream and secure ids
# ---------------------------------------------------------------------------------------------


def test_random_stream_seed_forms() -> None:
    assert RandomStream("abc").seed == ("abc",)
    assert RandomStream(["abc", "def"]).seed == ("abc", "def")
    assert RandomStream(["abc", "def"]).sequence("n").state == Alea("abc", "def", "n").state
    # An empty list adds no seed: Alea(name) alone, as `[].concat([])` does in Meteor.
    assert RandomStream([]).sequence("n").state == Alea("n").state


@pytest.mark.parametrize("seed", [None, ""])
def test_random_stream_without_seed_is_random(seed: str | None) -> None:
    first, second = RandomStream(seed), RandomStream(seed)
    assert len(first.seed) == 1
    assert len(first.seed[0]) == 20
    assert set(first.seed[0]) <= set(HEX_CHARS)
    assert first.seed != second.seed


def test_random_stream_sequences_are_separate_and_cached() -> None:
    stream = RandomStream("abc")
    books = stream.sequence("/collection/books")
    assert stream.sequence("/collection/books") is books
    assert stream.sequence("/collection/authors") is not books


def test_collection_stream_name() -> None:
    assert collection_stream_name("books") == "/collection/books"


def test_random_id() -> None:
    ids = {random_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 17 and set(i) <= set(UNMISTAKABLE_CHARS) for i in ids)
    assert len(random_id(5)) == 5


@given(st.integers(min_value=0, max_value=64))
def test_random_id_is_n_unmistakable_chars(n: int) -> None:
    got = random_id(n)
    assert len(got) == n and set(got) <= set(UNMISTAKABLE_CHARS)


def test_random_id_draws_every_char_about_evenly() -> None:
    """Rejection sampling: no char is drawn more often than the others (a plain
    ``byte % 55`` would favour the first 36 by 5 to 4)."""
    counts = Counter("".join(random_id(100) for _ in range(2_000)))
    assert set(counts) == set(UNMISTAKABLE_CHARS)
    expected = 200_000 / len(UNMISTAKABLE_CHARS)
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values())
