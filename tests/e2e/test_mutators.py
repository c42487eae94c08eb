"""Meteor's own client writes with Mongo modifiers through the collection mutators.

``node tests/e2e/node/mutators.js <url>`` runs the real Meteor 1.3 client (npm
``meteor-client-side`` under jsdom, over SockJS) against the session's relay: it inserts a
book with ``Books.insert``, applies the modifiers of ``CASES`` in order with
``Books.update(id, modifier, callback)`` and removes the book again. For every case the
document Meteor's stub made at once (minimongo's own ``_modify``) must equal the server's
document after the callback (``$inc``, ``$push``, ``$addToSet``, ``$pull``, ``$pop``,
``$unset`` and dotted ``$set`` into JSON and array fields), and that must be the expected
one; a modifier the server refuses (409, or the example's ``deny_update``: 403) leaves the
client with the server's unchanged document, the stub's guess undone.

Needs ``node`` and ``npm ci`` in tests/e2e/node, like tests/e2e/test_node_clients.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.node_runs import run_report
from tests.fixtures.relays import RelayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.node]

SCENARIO_TIMEOUT_MS = 25_000

#: (name, modifier, expected (details, ratings, price) after it, or the error it gets).
CASES: list[tuple[str, dict[str, Any], Any]] = [
    (
        "inc-and-push",
        {"$inc": {"details.likes": 2}, "$push": {"ratings": 5, "details.log": "read"}},
        ({"likes": 3, "log": ["start", "read"]}, [3, 5], "3.00"),
    ),
    (
        "dotted-set-and-addtoset",
        {
            "$set": {"details.publisher.city": "Paris"},
            "$addToSet": {"ratings": {"$each": [5, 1]}, "details.readers": {"name": "ann"}},
        },
        (
            {
                "likes": 3,
                "log": ["start", "read"],
                "publisher": {"city": "Paris"},
                "readers": [{"name": "ann"}],
            },
            [3, 5, 1],
            "3.00",
        ),
    ),
    (
        "addtoset-pull-pop-unset",
        {
            "$addToSet": {"details.readers": {"name": "ann"}},
            "$pull": {"ratings": 5},
            "$pop": {"details.log": -1},
            "$unset": {"details.likes": ""},
        },
        (
            {"log": ["read"], "publisher": {"city": "Paris"}, "readers": [{"name": "ann"}]},
            [3, 1],
            "3.00",
        ),
    ),
    (
        "inc-of-an-object",
        {"$inc": {"details.publisher": 1}},
        {
            "error": 409,
            "reason": "Cannot apply $inc modifier to non-number: 'details.publisher' is an object",
        },
    ),
    (
        "denied-negative-price",
        {"$set": {"price": "-1.00"}},
        {"error": 403, "reason": "Access denied"},
    ),
    (
        "pull-by-query-and-inc-new-path",
        {"$pull": {"details.readers": {"name": "ann"}}, "$inc": {"details.stats.views": 1}},
        (
            {"log": ["read"], "publisher": {"city": "Paris"}, "readers": [], "stats": {"views": 1}},
            [3, 1],
            "3.00",
        ),
    ),
]


def without_stamp(doc: dict[str, Any]) -> dict[str, Any]:
    """A book without ``updatedAt``: the server moves it, a stub cannot know it."""
    return {k: v for k, v in doc.items() if k != "updatedAt"}


def test_meteor_client_mutators_with_modifiers(
    node_toolchain: Path, relay_server: RelayProcess
) -> None:
    env = {
        **os.environ,
        "MUTATOR_CASES": json.dumps([{"name": n, "modifier": m} for n, m, _ in CASES]),
        "SCENARIO_TIMEOUT_MS": str(SCENARIO_TIMEOUT_MS),
    }
    script = str(node_toolchain / "mutators.js")
    report, proc = run_report(
        [script, relay_server.url], env, "mutators", SCENARIO_TIMEOUT_MS / 1000 + 10
    )
    if not report.get("ok") or proc.returncode != 0:
        pytest.fail(
            f"mutators scenario failed at {report.get('stage')!r} (exit {proc.returncode}):"
            f" {json.dumps(report.get('error'))}\nreport:\n{json.dumps(report, indent=1)[-12000:]}"
            f"\nstderr:\n{proc.stderr[-3000:]}"
        )

    inserted = report["inserted"]
    assert (inserted["details"], inserted["ratings"], inserted["price"]) == (
        {"likes": 1, "log": ["start"]},
        [3],
        "3.00",
    )
    assert [c["name"] for c in report["cases"]] == [name for name, _, _ in CASES]
    before = inserted
    simulated_failures = 0
    for (name, _, expected), case in zip(CASES, report["cases"], strict=True):
        final = case["final"]
        assert "thrown" not in case, (name, case)
        if isinstance(expected, dict):
            # Refused: the client ends with the server's document, unchanged.
            error = case["error"]
            assert (error["error"], error["reason"]) == (expected["error"], expected["reason"])
            assert without_stamp(final) == without_stamp(before), name
            if expected["error"] == 403:
                # The stub applied it (Meteor has no deny rules on the client); undone.
                assert case["stub"]["price"] == "-1.00", case
            else:
                simulated_failures += 1  # minimongo refused it too, in the stub
                assert without_stamp(case["stub"]) == without_stamp(before), case
            continue
        details, ratings, price = expected
        assert case["result"] == 1, case
        assert (final["details"], final["ratings"], final["price"]) == (details, ratings, price)
        # The same document as Meteor: its stub (minimongo) and the server agree.
        assert without_stamp(case["stub"]) == without_stamp(final), name
        assert final["updatedAt"] != before["updatedAt"], name
        before = final

    assert report["remove"] == 1 and report["afterRemove"] is True
    assert "lateCleanups" not in report
    for m in report["methods"]:
        assert (m["results"], m["updated"]) == (1, 1), m
    assert report["errors"] == [] and report["unexpected"] == []
    assert report["dataProblems"] == []
    assert report["pageErrors"] == []
    # The only console output: Meteor's note that a stub threw (the $inc of an object).
    simulated = [line for line in report["console"] if "while simulating" in line]
    assert len(simulated) == simulated_failures, report["console"]
    assert len(report["console"]) == len(simulated), report["console"]
