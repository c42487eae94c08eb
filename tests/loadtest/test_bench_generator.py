"""The generators seen as one: sessions split, reports merged exactly."""

from __future__ import annotations

from typing import Any

from loadtest.bench.generator import merge_reports, split


def test_split_spreads_sessions_evenly_and_never_empty() -> None:
    assert split(10, 3) == [4, 3, 3]
    assert split(2, 5) == [1, 1]
    assert split(20000, 2) == [10000, 10000]


def report(lat: list[list[float]], ready: int, **extra: Any) -> dict[str, Any]:
    every = sorted(x for w in lat for x in w)
    return {
        "sessions": ready,
        "ready": ready,
        "closedAfterReady": 0,
        "writes": len(lat),
        "deliveries": len(every),
        "missing": 0,
        "duplicates": 0,
        "p50": None,
        "p99": None,
        "max": every[-1] if every else None,
        "perWrite": [{"w": i, "received": len(w), "lat": sorted(w)} for i, w in enumerate(lat)],
        "errors": extra.get("errors", {}),
    }


def test_merged_reports_are_one_generator_holding_every_session() -> None:
    a = report([[1.0, 9.0], [2.0, 3.0]], ready=2, errors={"closed 1006": 1})
    b = report([[5.0, 4.0], [30.0]], ready=2, errors={"closed 1006": 2, "bad json": 1})
    b["missing"] = 1
    merged = merge_reports([a, b])
    assert (merged["ready"], merged["deliveries"], merged["missing"]) == (4, 7, 1)
    first, second = merged["perWrite"]
    assert (first["received"], first["first"], first["last"]) == (4, 1.0, 9.0)
    assert (first["p50"], first["p99"]) == (4.0, 9.0)
    assert (second["received"], second["last"]) == (3, 30.0)
    # Nearest rank over all 7 deliveries: 1 2 3 4 5 9 30.
    assert (merged["p50"], merged["p99"], merged["max"]) == (4.0, 30.0, 30.0)
    assert merged["errors"] == {"closed 1006": 3, "bad json": 1}
