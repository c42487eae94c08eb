"""Fuzz frames for DDP, and how to tell whether each one was answered.

Pure: no I/O, no clock; a ``FrameGenerator`` is a seeded ``random.Random``, so a seed
reproduces a run's frames exactly. Three kinds of frame:

* ``bytes``: random text (any code point but surrogates, so it can travel in a text
  frame), and valid messages cut short;
* ``json``: random JSON values, objects with a random ``msg`` among them;
* ``ddp``: a valid DDP message (``connect``, ``sub``, ``unsub``, ``method``, ``ping``,
  ``pong`` or a made-up ``msg``) with 0 to 3 mutations: a field of the wrong type, a field
  missing, an extra field, a string with a NUL character, an unpaired surrogate, control
  characters or 32 KiB of text in it, numbers that overflow a double (``1e400``) or have
  5,000 digits, ``NaN``, nesting 5,000 deep, EJSON values that cannot be decoded, an
  unknown ``msg``.

Every ``Frame`` says what the protocol (``reference/ddp-protocol.md`` 1.8, 2.4, 2.5)
owes it: ``well_formed`` frames are RFC 8259 JSON objects with a string ``msg``, and each
gets one answer (``result``, ``nosub``/``ready``, ``pong``, ``error`` or ``failed``),
except a ``pong``, which gets none. Other frames also get an answer from Meteor (``Bad
request``), counted apart: the acceptance is about the well-formed ones. Ids are unique
per generator, so an answer can be paired with its frame (``unanswered``).

``account`` compares a batch of frames with the replies that came before the batch's
barrier (a method call the relay handles after every frame of the batch: a session
handles its messages in order, and answers malformed ones as they arrive, before that).

Must not: send anything, or know the relay's answers beyond what the protocol says.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The example's publications and methods (``example/bookstore/ddp.py``, the accounts
#: methods); ``books.slowRename`` is left out: a call holds a work-pool slot for up to a
#: minute, which is the ``orm`` attack's subject, not the fuzzer's.
PUBLICATIONS = ("books.all", "authors.all", "books.byAuthorEmail", "favorites.mine")
METHODS = (
    "books.rename",
    "books.setAuthor",
    "books.create",
    "books.remove",
    "books.fail",
    "favorites.add",
    "favorites.remove",
    "users.whoami",
    "login",
    "logout",
    "getNewToken",
    "removeOtherTokens",
    "createUser",
    "changePassword",
    "forgotPassword",
    "resetPassword",
    "verifyEmail",
    "/bookstore.book/insert",
    "/bookstore.book/update",
    "/bookstore.book/remove",
)
UNKNOWN_MSGS = ("Method", "subscribe", "", "ping ", "added", "result", "connected", "nosub")
#: Longest random string, and the nesting depths tried.
LONG_STRING = 32 * 1024
DEPTHS = (2, 64, 999, 1000, 1001, 5000)


@dataclass(frozen=True, slots=True)
class Raw:
    """A JSON token written as is: ``1e400``, ``NaN``, a deep nesting, a raw NUL."""

    text: str
    #: Whether it is RFC 8259 JSON (``NaN`` and raw control characters are not).
    valid: bool = True


def render(value: Any) -> tuple[str, bool]:
    """``value`` as JSON text (``Raw`` tokens as they are), and whether that is valid
    JSON. Strings are escaped to ASCII, so an unpaired surrogate becomes ``\\ud800`` and
    the text stays encodable."""
    if isinstance(value, Raw):
        return value.text, value.valid
    if isinstance(value, dict):
        parts, valid = [], True
        for key, item in value.items():
            text, ok = render(item)
            parts.append(json.dumps(str(key)) + ":" + text)
            valid = valid and ok
        return "{" + ",".join(parts) + "}", valid
    if isinstance(value, list | tuple):
        parts, valid = [], True
        for item in value:
            text, ok = render(item)
            parts.append(text)
            valid = valid and ok
        return "[" + ",".join(parts) + "]", valid
    return json.dumps(value), True


@dataclass(frozen=True, slots=True)
class Frame:
    text: str
    #: ``bytes``, ``json`` or ``ddp:<template>``.
    kind: str
    mutations: tuple[str, ...] = ()
    #: An RFC 8259 JSON object with a string ``msg``.
    well_formed: bool = False
    #: Answers the protocol owes this frame (1, or 0 for a ``pong``).
    answers: int = 1
    #: (reply kind, JSON of the id) pairs an answer to this frame may carry.
    keys: tuple[tuple[str, str], ...] = ()
    #: Sent as a binary WebSocket frame (``text`` UTF-8 encoded; handshake sockets only).
    binary: bool = False

    @property
    def required(self) -> int:
        """Answers the acceptance requires (those owed to well-formed frames)."""
        return self.answers if self.well_formed else 0


@dataclass
class FrameGenerator:
    """Seeded frames; ``prefix`` makes ids unique across generators of one run."""

    seed: int
    prefix: str = "f"
    book_ids: Sequence[str] = ("lathe",)
    author_ids: Sequence[str] = ("leguin",)
    rng: random.Random = field(init=False)
    _counter: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- ids and values -------------------------------------------------------------------

    def uid(self) -> str:
        self._counter += 1
        return f"{self.prefix}{self._counter}"

    def word(self, n: int = 8) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=n))

    def text(self, n: int) -> str:
        """Random text: any code point outside the surrogates, weighted to ASCII."""
        out = []
        for _ in range(n):
            roll = self.rng.random()
            if roll < 0.6:
                out.append(chr(self.rng.randrange(0x20, 0x7F)))
            elif roll < 0.7:
                out.append(chr(self.rng.randrange(0, 0x20)))
            elif roll < 0.9:
                out.append(chr(self.rng.randrange(0x80, 0xD800)))
            else:
                out.append(chr(self.rng.randrange(0xE000, 0x110000)))
        return "".join(out)

    def poisoned(self, base: str) -> tuple[Any, str]:
        """``base`` (kept, so a unique id stays unique) with something hostile added, and
        the mutation's name."""
        rng = self.rng
        kind = rng.choice(
            ("nul", "raw-nul", "surrogate", "low-surrogate", "long", "unicode", "control")
        )
        if kind == "nul":
            return base + "\x00" + self.word(3), kind
        if kind == "raw-nul":
            # A raw NUL inside a JSON string: not JSON (control characters must be escaped).
            return Raw(json.dumps(base)[:-1] + "\x00" + '"', valid=False), kind
        if kind == "surrogate":
            return base + "\ud800" + self.word(2), kind
        if kind == "low-surrogate":
            return base + "\udc00\ud800", kind
        if kind == "long":
            return base + "x" * rng.randrange(1000, LONG_STRING), kind
        if kind == "unicode":
            return base + "é漢字\U0001f642\u202e\u200b", kind
        return base + "\x01\x1f\x7f", kind

    def number(self) -> tuple[Any, str]:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            return Raw("1e400"), "1e400"
        if choice == 1:
            return Raw("-1e400"), "-1e400"
        if choice == 2:
            return Raw("1e-400"), "1e-400"
        if choice == 3:
            return Raw("1" + "0" * 400), "int400"
        if choice == 4:
            return Raw("9" * 5000), "int5000"
        if choice == 5:
            return Raw(rng.choice(("NaN", "Infinity", "-Infinity")), valid=False), "nan"
        if choice == 6:
            return 2**63 + rng.randrange(100), "int64"
        if choice == 7:
            return 1.7976931348623157e308, "max-double"
        return -0.0, "negative-zero"

    def deep(self) -> tuple[Raw, str]:
        depth = self.rng.choice(DEPTHS)
        if self.rng.random() < 0.5:
            return Raw("[" * depth + "]" * depth), f"deep-list-{depth}"
        return Raw('{"a":' * depth + "1" + "}" * depth), f"deep-object-{depth}"

    def ejson(self) -> tuple[Any, str]:
        values: list[Any] = [
            {"$date": "yesterday"},
            {"$date": Raw("1e400")},
            {"$date": 8.64e15 + 1},
            {"$date": 1, "extra": 2},
            {"$binary": "!!!not base64"},
            {"$binary": 5},
            {"$type": "nope", "$value": 1},
            {"$type": 5, "$value": None},
            {"$InfNaN": 1},
            {"$InfNaN": -1},
            {"$InfNaN": 0},
            {"$InfNaN": "x"},
            {"$escape": 5},
            {"$escape": {"$date": 1}},
            {"$regexp": "(", "$flags": "z"},
        ]
        return self.rng.choice(values), "ejson"

    def weird(self) -> tuple[Any, str]:
        """A value of some other type than a field had (never a plain string)."""
        rng = self.rng
        roll = rng.randrange(8)
        if roll == 0:
            return self.number()
        if roll == 1:
            return self.deep()
        if roll == 2:
            return self.ejson()
        if roll == 3:
            return rng.choice([None, True, False]), "literal"
        if roll == 4:
            return rng.choice([0, -1, 1.5, 2**53 + 1]), "number"
        if roll == 5:
            return rng.choice([[], [None], ["1"]]), "list"
        return rng.choice([{}, {"": None}, {"msg": "method"}]), "object"

    def random_json(self, depth: int = 0) -> Any:
        rng = self.rng
        roll = rng.random()
        if depth >= 4 or roll < 0.4:
            return rng.choice(
                [None, True, False, rng.randrange(-(10**6), 10**6), rng.random(), self.text(8)]
            )
        if roll < 0.7:
            return [self.random_json(depth + 1) for _ in range(rng.randrange(4))]
        return {self.text(4): self.random_json(depth + 1) for _ in range(rng.randrange(4))}

    # -- valid messages -------------------------------------------------------------------

    def params_for(self, method: str) -> list[Any]:
        rng, word = self.rng, self.word
        book = rng.choice(list(self.book_ids))
        author = rng.choice(list(self.author_ids))
        digest = {"digest": f"{rng.getrandbits(256):064x}", "algorithm": "sha-256"}
        table: dict[str, list[Any]] = {
            "books.rename": [book, "fuzz " + word()],
            "books.setAuthor": [book, author],
            "books.create": [{"title": word(), "authorId": author, "price": "9.99"}],
            "books.remove": [book],
            "favorites.add": [book],
            "favorites.remove": [book],
            "login": [
                rng.choice(
                    [
                        {"user": {"username": "reader"}, "password": digest},
                        {"user": {"email": word() + "@example.com"}, "password": word()},
                        {"resume": word(43)},
                    ]
                )
            ],
            "createUser": [{"username": "fuzz-" + word(), "password": digest}],
            "changePassword": [digest, digest],
            "forgotPassword": [{"email": word() + "@example.com"}],
            "resetPassword": [word(20), digest],
            "verifyEmail": [word(20)],
            "/bookstore.book/insert": [{"_id": word(17), "title": word(), "authorId": author}],
            "/bookstore.book/update": [{"_id": book}, {"$set": {"title": "fuzz " + word()}}],
            "/bookstore.book/remove": [{"_id": book}],
        }
        return table.get(method, [])

    def template(self) -> tuple[str, dict[str, Any]]:
        rng = self.rng
        roll = rng.random()
        if roll < 0.42:
            name = rng.choice(METHODS) if rng.random() < 0.8 else "probe." + self.word()
            msg: dict[str, Any] = {"msg": "method", "id": self.uid(), "method": name}
            msg["params"] = self.params_for(name)
            if rng.random() < 0.3:
                msg["randomSeed"] = self.word(20)
            return "method", msg
        if roll < 0.62:
            name = rng.choice(PUBLICATIONS) if rng.random() < 0.8 else "probe." + self.word()
            params: list[Any] = ["ursula.leguin@example.org"] if name.endswith("Email") else []
            return "sub", {"msg": "sub", "id": self.uid(), "name": name, "params": params}
        if roll < 0.71:
            return "unsub", {"msg": "unsub", "id": self.uid()}
        if roll < 0.81:
            return "ping", {"msg": "ping", "id": self.uid()}
        if roll < 0.84:
            return "pong", {"msg": "pong", "id": self.uid()}
        if roll < 0.98:
            return "unknown", {"msg": rng.choice(UNKNOWN_MSGS), "id": self.uid()}
        return "connect", {"msg": "connect", "version": "1", "support": ["1", "pre2", "pre1"]}

    # -- mutations ------------------------------------------------------------------------

    def mutate(self, msg: dict[str, Any]) -> str:
        """Apply one mutation to ``msg`` in place; its name."""
        rng = self.rng
        fields = [k for k in msg if k != "msg"]
        roll = rng.randrange(9)
        if roll == 0 and fields:
            name = rng.choice(fields)
            value, what = self.weird()
            msg[name] = value
            return f"retype:{name}:{what}"
        if roll == 1 and fields:
            name = rng.choice(fields)
            del msg[name]
            return f"drop:{name}"
        if roll == 2:
            value, what = self.weird()
            msg[rng.choice(["extra", "$date", "__proto__", "constructor", self.word(3)])] = value
            return f"extra:{what}"
        if roll == 3:
            strings = [k for k in fields if isinstance(msg[k], str)]
            if strings:
                name = rng.choice(strings)
                msg[name], what = self.poisoned(msg[name])
                return f"poison:{name}:{what}"
        if roll in (3, 4):
            value, what = self.poisoned(self.word())
            msg.setdefault("params", [])
            if isinstance(msg["params"], list):
                msg["params"] = [*msg["params"], value]
                return f"poison:params:{what}"
        if roll == 5 and isinstance(msg.get("params"), list):
            value, what = self.number()
            msg["params"] = [*msg["params"], value]
            return f"number:{what}"
        if roll == 6:
            value, what = self.deep()
            msg["params"] = [value]
            return what
        if roll == 7:
            value, what = self.ejson()
            params = msg.get("params")
            msg["params"] = [*(params if isinstance(params, list) else []), value]
            return what
        if rng.random() < 0.7:
            msg["msg"] = rng.choice(UNKNOWN_MSGS) + (self.word(3) if rng.random() < 0.3 else "")
            return "msg:unknown"
        msg["msg"], what = self.weird()
        return f"msg:{what}"

    # -- frames ---------------------------------------------------------------------------

    def frame(self, *, handshake: bool = False) -> Frame:
        """The next frame. ``handshake``: the first frame of a socket (before ``connect``:
        every frame is owed an answer, ``pong`` included), now and then a binary one."""
        rng = self.rng
        roll = rng.random()
        if handshake and roll < 0.1:
            # What a binary frame deserves is not DDP's to say: nothing is owed.
            return Frame(self.text(rng.randrange(1, 200)), "binary", answers=0, binary=True)
        if roll < 0.06:
            return self._bytes_frame()
        if roll < 0.1:
            return self._truncated_frame()
        if roll < 0.2:
            return self._json_frame(handshake)
        return self._ddp_frame(handshake)

    def _bytes_frame(self) -> Frame:
        text = self.text(self.rng.randrange(1, 2000))
        if not text.strip():
            text = "x" + text
        return Frame(text, "bytes", answers=1)

    def _truncated_frame(self) -> Frame:
        _, msg = self.template()
        text, _ = render(msg)
        cut = self.rng.randrange(1, max(2, len(text) - 1))
        return Frame(text[:cut], "bytes", ("truncated",), answers=1)

    def _json_frame(self, handshake: bool) -> Frame:
        rng = self.rng
        if rng.random() < 0.5:
            value: Any = {self.text(4): self.random_json(1) for _ in range(rng.randrange(3))}
            if rng.random() < 0.6:
                value["msg"] = self.text(rng.randrange(0, 12)) if rng.random() < 0.7 else 5
        else:
            value = self.random_json()
        text, valid = render(value)
        return self._classified(text, valid, value, "json", (), handshake)

    def _ddp_frame(self, handshake: bool) -> Frame:
        template, msg = self.template()
        if handshake and self.rng.random() < 0.3:
            template, msg = (
                "connect",
                {
                    "msg": "connect",
                    "version": "1",
                    "support": ["1", "pre2", "pre1"],
                },
            )
        mutations = []
        if self.rng.random() >= 0.15:
            for _ in range(self.rng.randrange(1, 4)):
                mutations.append(self.mutate(msg))
        if handshake and self.rng.random() < 0.05:
            msg = {"msg": "disconnect"}
            mutations = ["disconnect"]
        text, valid = render(msg)
        return self._classified(text, valid, msg, f"ddp:{template}", tuple(mutations), handshake)

    def _classified(
        self,
        text: str,
        valid: bool,
        value: Any,
        kind: str,
        mutations: tuple[str, ...],
        handshake: bool,
    ) -> Frame:
        msg = value.get("msg") if isinstance(value, dict) else None
        well_formed = valid and isinstance(value, dict) and isinstance(msg, str)
        # Before ``connect`` every message gets an answer (``Must connect first`` at
        # least); after it, a ``pong`` gets none (reference 1.2, 1.5).
        answers = 0 if (well_formed and msg == "pong" and not handshake) else 1
        return Frame(
            text,
            kind,
            mutations,
            well_formed=well_formed,
            answers=answers,
            keys=_keys(value) if isinstance(value, dict) else (),
        )

    def batch(self, max_frames: int, max_bytes: int) -> list[Frame]:
        """Frames for one batch of a connected socket: at most ``max_frames`` and (past the
        first) ``max_bytes`` of text; a ``connect`` ends it (the relay may close on it)."""
        out: list[Frame] = []
        size = 0
        while len(out) < max_frames:
            frame = self.frame()
            if out and size + len(frame.text) > max_bytes:
                break
            out.append(frame)
            size += len(frame.text)
            if frame.kind == "ddp:connect":
                break
        return out


def _id_key(value: Any) -> str | None:
    if isinstance(value, Raw):
        return None
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _keys(msg: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    kind = msg.get("msg")
    key = _id_key(msg.get("id")) if "id" in msg else "null"
    if key is None:
        return ()
    if kind == "method":
        return (("result", key),)
    if kind == "sub":
        return (("sub", key),)
    if kind == "unsub":
        return (("nosub", key),)
    if kind == "ping":
        return (("pong", key),)
    return ()


def reply_keys(reply: dict[str, Any]) -> list[tuple[str, str]]:
    """The (kind, id) keys a reply carries (``ready`` one per sub; ``nosub`` answers an
    ``unsub`` or a ``sub``)."""
    kind = reply.get("msg")
    if kind == "ready":
        subs = reply.get("subs")
        return [("sub", json.dumps(s, sort_keys=True)) for s in (subs or [])]
    key = json.dumps(reply.get("id"), sort_keys=True) if "id" in reply else "null"
    if kind == "result":
        return [("result", key)]
    if kind == "nosub":
        return [("nosub", key), ("sub", key)]
    if kind == "pong":
        return [("pong", key)]
    return []


def answers_in(replies: Sequence[dict[str, Any]]) -> int:
    """How many client messages ``replies`` answer (``relay`` answer kinds only)."""
    total = 0
    for reply in replies:
        kind = reply.get("msg")
        if kind == "ready":
            total += len(reply.get("subs") or [])
        elif kind in ("result", "nosub", "error", "pong", "failed", "connected"):
            total += 1
    return total


def unanswered(frames: Sequence[Frame], replies: Sequence[dict[str, Any]]) -> list[Frame]:
    """Frames no reply can be paired with: id-carrying replies pair with the frame of
    that id, ``error`` and ``failed`` with any frame not yet paired (earliest first,
    preferring frames without id keys, which cannot have been answered otherwise)."""
    open_frames = [f for f in frames if f.answers > 0]
    by_key: dict[tuple[str, str], list[int]] = {}
    for i, frame in enumerate(open_frames):
        for key in frame.keys:
            by_key.setdefault(key, []).append(i)
    paired = [False] * len(open_frames)
    generic = 0
    for reply in replies:
        matched = False
        for key in reply_keys(reply):
            for i in by_key.get(key, []):
                if not paired[i]:
                    paired[i] = matched = True
                    break
            if matched:
                break
        if not matched and reply.get("msg") in ("error", "failed", "connected"):
            generic += 1
        elif not matched and reply.get("msg") == "ready":
            generic += max(0, len(reply.get("subs") or []) - 1)
    # Errors answer frames whose shape was refused: those without a usable id first.
    order = sorted(range(len(open_frames)), key=lambda i: (bool(open_frames[i].keys), i))
    for i in order:
        if generic == 0:
            break
        if not paired[i]:
            paired[i] = True
            generic -= 1
    return [f for f, ok in zip(open_frames, paired, strict=True) if not ok]


@dataclass
class Tally:
    """What the fuzz connections sent and got back, summed over batches."""

    frames: int = 0
    well_formed: int = 0
    required: int = 0
    optional: int = 0
    answers: int = 0
    #: Answers owed but missing, all frames / well-formed frames only.
    missing: int = 0
    missing_required: int = 0
    #: Of ``missing_required``: in batches the relay cut short by closing the socket (the
    #: frames it had queued were dropped unanswered), or whose barrier never came back.
    missing_required_cut: int = 0
    #: Answers beyond what was owed (a frame answered twice, or a reply to nothing).
    extra: int = 0
    batches: int = 0
    #: Batches whose barrier never came back (the socket closed or timed out).
    broken_batches: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    mutations: dict[str, int] = field(default_factory=dict)

    def add(
        self, frames: Sequence[Frame], replies: Sequence[dict[str, Any]], *, complete: bool
    ) -> list[Frame]:
        """Count one batch; the frames left unanswered (empty when all were)."""
        self.batches += 1
        if not complete:
            self.broken_batches += 1
        self.frames += len(frames)
        for frame in frames:
            self.kinds[frame.kind] = self.kinds.get(frame.kind, 0) + 1
            for mutation in frame.mutations:
                name = mutation.split(":", 2)
                label = name[0] if name[0] not in ("retype", "poison") else ":".join(name[::2])
                self.mutations[label] = self.mutations.get(label, 0) + 1
        self.well_formed += sum(1 for f in frames if f.well_formed)
        required = sum(f.required for f in frames)
        owed = sum(f.answers for f in frames)
        self.required += required
        self.optional += owed - required
        got = answers_in(replies)
        self.answers += got
        if got >= owed:
            self.extra += got - owed
            return []
        lost = unanswered(frames, replies)
        self.missing += owed - got
        missing_required = min(owed - got, sum(f.required for f in lost))
        self.missing_required += missing_required
        if not complete:
            self.missing_required_cut += missing_required
        return lost
