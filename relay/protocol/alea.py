"""Meteor-compatible random ids: the Alea generator, ``RandomStream`` and ``makeRpcSeed``.

Layer: pure core (stdlib only). A method call carries a ``randomSeed``; the client's stub and
the server both draw document ids from ``Alea(randomSeed, "/collection/<name>")``, so an
insert gets the same ``_id`` on both sides (reference ``ddp-protocol.md`` section 4). This is a
port from the written description of Johannes Baagøe's Alea and Mash as Meteor uses them
(``packages/random``, ``ddp-common/random_stream.js``); the test vectors of section 4.5 pin it
bit for bit.

It must not do I/O, read the clock or log. Alea is predictable by design: use it only where a
peer must reproduce the value. For session ids, resume tokens and ids drawn outside a method,
use :func:`random_id`, which takes its randomness from ``secrets``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence

from relay.protocol.ejson import format_js_number

__all__ = [
    "HEX_CHARS",
    "SECRET_CHARS",
    "UNMISTAKABLE_CHARS",
    "Alea",
    "RandomStream",
    "collection_stream_name",
    "make_rpc_seed",
    "random_id",
]

#: Alphabet of ``id()``: 55 chars, without 0, 1, I, O, U, V and l (``Random.id``).
UNMISTAKABLE_CHARS = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"
#: Alphabet of ``secret()``: URL-safe base64 digits, in Meteor's order (``Random.secret``).
SECRET_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
#: Alphabet of ``hex_string()``.
HEX_CHARS = "0123456789abcdef"

_TWO_POW_32 = 4294967296.0  # 2**32
_TWO_POW_MINUS_32 = 2.3283064365386963e-10  # 2**-32, exact
_MASH_START = 0xEFC8249D
_MASH_FACTOR = 0.02519603282416938
_ALEA_MULTIPLIER = 2091639


class _Mash:
    """Baagøe's Mash string hash. Its accumulator carries over from one call to the next."""

    __slots__ = ("_n",)

    def __init__(self) -> None:
        self._n: float = _MASH_START

    def __call__(self, data: str) -> float:
        n = self._n
        for code_unit in _utf16_code_units(data):
            # Every step is IEEE double arithmetic, as in JS; int() truncates like JS's ">>> 0"
            # for these non-negative values, and the mask is the "mod 2**32" of ToUint32.
            n += code_unit
            h = _MASH_FACTOR * n
            n = int(h) & 0xFFFFFFFF
            h -= n
            h *= n
            n = int(h) & 0xFFFFFFFF
            h -= n
            n += h * _TWO_POW_32
        self._n = n
        return (int(n) & 0xFFFFFFFF) * _TWO_POW_MINUS_32


def _utf16_code_units(text: str) -> Iterator[int]:
    # JS strings are UTF-16: a character outside the BMP hashes as its two surrogates.
    for char in text:
        point = ord(char)
        if point < 0x10000:
            yield point
        else:
            point -= 0x10000
            yield 0xD800 + (point >> 10)
            yield 0xDC00 + (point & 0x3FF)


def _js_to_string(seed: object) -> str:
    """Mash calls ``toString()`` on each seed: format the seed as JavaScript would."""
    if isinstance(seed, str):
        return seed
    if isinstance(seed, bool):
        return "true" if seed else "false"
    if isinstance(seed, int | float):
        return format_js_number(seed)
    # JS would stringify objects as "[object Object]" (and throw on null): almost surely a bug.
    raise TypeError(
        f"an Alea seed must be a str, int, float or bool, not {type(seed).__qualname__}"
    )


class Alea:
    """Meteor's seeded generator (``Random.createWithSeeds(...seeds)``).

    Equal seeds give equal sequences, in Python and in every Meteor client.
    """

    __slots__ = ("_c", "_s0", "_s1", "_s2")

    def __init__(self, *seeds: object) -> None:
        if not seeds:
            # Same as Meteor: seeding from the clock would not be reproducible, so refuse.
            raise ValueError("Alea needs at least one seed")
        texts = [_js_to_string(seed) for seed in seeds]
        mash = _Mash()
        s0 = mash(" ")
        s1 = mash(" ")
        s2 = mash(" ")
        for text in texts:
            # Each seed is hashed three times in a row, and the Mash state carries over.
            s0 -= mash(text)
            if s0 < 0:
                s0 += 1
            s1 -= mash(text)
            if s1 < 0:
                s1 += 1
            s2 -= mash(text)
            if s2 < 0:
                s2 += 1
        self._s0 = s0
        self._s1 = s1
        self._s2 = s2
        self._c = 1

    @property
    def state(self) -> tuple[float, float, float]:
        """The three fractional state words ``(s0, s1, s2)``, for checking a port."""
        return self._s0, self._s1, self._s2

    def fraction(self) -> float:
        """The next number in [0, 1), with 32 bits of randomness."""
        t = _ALEA_MULTIPLIER * self._s0 + self._c * _TWO_POW_MINUS_32
        self._s0 = self._s1
        self._s1 = self._s2
        # t is positive and below 2**31, so int() is JS's "t | 0".
        self._c = int(t)
        self._s2 = t - self._c
        return self._s2

    def choice(self, alphabet: str) -> str:
        """One character of ``alphabet``, as ``Random.choice``."""
        if not alphabet:
            raise ValueError("choice() needs a non-empty alphabet")
        return alphabet[int(self.fraction() * len(alphabet))]

    def _random_string(self, n: int, alphabet: str) -> str:
        return "".join(self.choice(alphabet) for _ in range(n))

    def id(self, n: int = 17) -> str:
        """A Meteor document id (``Random.id``): ``n`` chars of :data:`UNMISTAKABLE_CHARS`."""
        return self._random_string(n, UNMISTAKABLE_CHARS)

    def secret(self, n: int = 43) -> str:
        """``Random.secret``: ``n`` chars of :data:`SECRET_CHARS`, 6 bits each."""
        return self._random_string(n, SECRET_CHARS)

    def hex_string(self, n: int) -> str:
        """``Random.hexString``: ``n`` lowercase hex digits, one draw per digit."""
        return self._random_string(n, HEX_CHARS)


class RandomStream:
    """The random streams of one method invocation (``ddp-common`` ``RandomStream``).

    Each name gets its own Alea seeded with ``(*seed, name)``; asking for the same name again
    continues the same sequence, so the n-th insert of a method gets the n-th id.
    """

    __slots__ = ("_sequences", "seed")

    def __init__(self, seed: str | Sequence[str] | None) -> None:
        # Meteor does `[].concat(seed || randomToken())`: a missing or empty seed means ids
        # nobody can reproduce, exactly as a Meteor server behaves.
        if seed is None or seed == "":
            self.seed: tuple[str, ...] = (secrets.token_hex(10),)
        elif isinstance(seed, str):
            self.seed = (seed,)
        else:
            self.seed = tuple(seed)
        self._sequences: dict[str, Alea] = {}

    def sequence(self, name: str) -> Alea:
        """The generator for ``name``, created on first use and then reused."""
        generator = self._sequences.get(name)
        if generator is None:
            generator = self._sequences[name] = Alea(*self.seed, name)
        return generator


def collection_stream_name(collection: str) -> str:
    """The stream a collection's inserts draw ids from (``Mongo.Collection._makeNewID``)."""
    return "/collection/" + collection


def make_rpc_seed(stream: RandomStream, method_name: str) -> str:
    """The ``randomSeed`` for a method called from inside another (``DDPCommon.makeRpcSeed``)."""
    return stream.sequence("/rpc/" + method_name).hex_string(20)


#: Random bytes at or above this are drawn again, so ``byte % 55`` is uniform.
_UNBIASED_BELOW = 256 - 256 % len(UNMISTAKABLE_CHARS)


def random_id(n: int = 17) -> str:
    """A cryptographically strong Meteor-style id of ``n`` :data:`UNMISTAKABLE_CHARS`.

    About 98 bits for the default 17 chars. One read of the system's random source per id
    (almost always), not one per character as ``secrets.choice`` makes: a session draws
    several ids as it opens.
    """
    chars = UNMISTAKABLE_CHARS
    size = len(chars)
    out: list[str] = []
    while len(out) < n:
        # 14% of bytes are rejected on average: n + n / 4 + 4 bytes nearly always suffice.
        for byte in secrets.token_bytes(n + n // 4 + 4):
            if byte < _UNBIASED_BELOW:
                out.append(chars[byte % size])
                if len(out) == n:
                    break
    return "".join(out)
