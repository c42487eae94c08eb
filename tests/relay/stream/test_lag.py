"""relay.stream.lag: the worst lag per channel class since the last take, against a
brute-force model (every report kept, maxima computed at take)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.protocol.changestream import CHANNEL_CLASSES, channel_class
from relay.stream import lag as lag_module
from relay.stream.lag import LagWindow

CHANNELS = ["ddp_bookstore_book", "ddp_ev_chat_1a2b3c4d", "ddp_ddp_presence", "ddp_ddp_presence_p3"]

Report = tuple[str, str, float]  # kind ("behind" | "late" | "take"), channel, value
reports = st.lists(
    st.tuples(
        st.sampled_from(["behind", "late", "take"]),
        st.sampled_from(CHANNELS),
        st.floats(-5, 1e6, allow_nan=False),
    ),
    max_size=80,
)


def model(window: list[Report]) -> list[tuple[str, float, int]]:
    out = []
    for cls in CHANNEL_CLASSES:
        seconds = [v for k, c, v in window if k == "late" and channel_class(c) == cls]
        changes = [int(v) for k, c, v in window if k == "behind" and channel_class(c) == cls]
        out.append((cls, max([0.0, *seconds]), max([0, *changes])))
    return out


@given(reports)
def test_take_gives_the_worst_of_each_class_since_the_last_take(steps: list[Report]) -> None:
    window = LagWindow()
    since: list[Report] = []
    for kind, channel, value in steps:
        if kind == "take":
            assert window.take() == model(since)
            since = []
        elif kind == "behind":
            window.behind(channel, int(value))
            since.append((kind, channel, value))
        else:
            window.late(channel, value)
            since.append((kind, channel, value))
    assert window.take() == model(since)
    assert window.take() == model([])  # back to 0


def test_the_class_cache_is_bounded() -> None:
    window = LagWindow()
    limit = lag_module.CACHE_MAX
    for i in range(limit + 10):
        window.behind(f"ddp_ev_s_{i:08x}", 1)
    assert len(window._index) <= limit
    assert window.take()[1] == ("event", 0.0, 1)
