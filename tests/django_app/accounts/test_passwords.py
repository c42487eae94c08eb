"""Meteor's password digest (CESU-8 SHA-256) and the password parameter."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_app.accounts.passwords import (
    MAX_PASSWORD_LENGTH,
    Password,
    meteor_digest,
    parse_password,
)
from django_app.exceptions import MatchFailed

# Reference 6.1: what Meteor's SHA256() gives (run in Node).
VECTORS = {
    "password": "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8",
    "s3cret-Tök": "fc71e397520736def76582365cebc193835a9140071a71e99f935393ea41bc1b",
    "😀": "ea645893a930e0872284cf8fbc8d14f66f052aea0bc8d9c4829f08a38219940c",
}


@pytest.mark.parametrize(("password", "expected"), VECTORS.items())
def test_reference_vectors(password: str, expected: str) -> None:
    assert meteor_digest(password) == expected


def test_outside_the_bmp_differs_from_standard_sha256() -> None:
    standard = hashlib.sha256("😀".encode()).hexdigest()
    assert standard.startswith("f0443a34") and standard.endswith("e2d9")
    assert meteor_digest("😀") != standard


@given(st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"])))
def test_bmp_text_is_standard_sha256(text: str) -> None:
    assert meteor_digest(text) == hashlib.sha256(text.encode("utf-8")).hexdigest()


def _cesu8(text: str) -> bytes:
    """An independent CESU-8: each UTF-16 code unit as its own 1-3 byte UTF-8 sequence."""
    out = bytearray()
    for char in text:
        code = ord(char)
        units = (
            [code]
            if code < 0x10000
            else [
                0xD800 + ((code - 0x10000) >> 10),
                0xDC00 + ((code - 0x10000) & 0x3FF),
            ]
        )
        for c in units:
            if c < 0x80:
                out.append(c)
            elif c < 0x800:
                out += bytes([0xC0 | c >> 6, 0x80 | c & 0x3F])
            else:
                out += bytes([0xE0 | c >> 12, 0x80 | (c >> 6) & 0x3F, 0x80 | c & 0x3F])
    return bytes(out)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_any_text_is_sha256_of_its_cesu8(text: str) -> None:
    assert meteor_digest(text) == hashlib.sha256(_cesu8(text)).hexdigest()


def test_plain_passwords() -> None:
    parsed = parse_password("password")
    assert parsed == Password(digest=VECTORS["password"], plain="password")
    assert parse_password("").plain == ""
    assert parse_password("x" * MAX_PASSWORD_LENGTH).plain == "x" * MAX_PASSWORD_LENGTH
    assert repr(parsed) == "<Password plain>"  # never the password in a log


def test_digests() -> None:
    parsed = parse_password({"digest": VECTORS["password"], "algorithm": "sha-256"})
    assert parsed == Password(digest=VECTORS["password"])
    assert repr(parsed) == "<Password digest>"


@pytest.mark.parametrize(
    "value",
    [
        "x" * (MAX_PASSWORD_LENGTH + 1),
        None,
        5,
        [],
        {"digest": VECTORS["password"]},
        {"digest": VECTORS["password"], "algorithm": "sha-1"},
        {"digest": VECTORS["password"].upper(), "algorithm": "sha-256"},
        {"digest": VECTORS["password"][:63], "algorithm": "sha-256"},
        {"digest": VECTORS["password"] + "0", "algorithm": "sha-256"},
        {"digest": "g" * 64, "algorithm": "sha-256"},
        {"digest": 5, "algorithm": "sha-256"},
        {"digest": VECTORS["password"], "algorithm": "sha-256", "extra": 1},
    ],
)
def test_anything_else_is_match_failed(value: Any) -> None:
    with pytest.raises(MatchFailed):
        parse_password(value)
