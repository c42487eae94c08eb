"""``loadtest.bench.beyond`` and the ``events``/``presence`` options without a server:
their defaults (the issue's), the options refused before anything starts, the churn pool's
size, the medians and verdicts over runs, and the tables.

The real runs are in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtest.bench import beyond, cli
from tests.loadtest.bench_runs import events_run, phase, presence_run, sustain_run

# -- options ------------------------------------------------------------------------------------


def test_events_defaults_are_the_issue_s() -> None:
    args = cli.build_parser().parse_args(["events"])
    assert args.sessions == [5000] and args.events == 200 and args.renames == 20
    assert args.sustain_rates == [1000.0] and args.sustain_sessions == 100
    assert args.sustain_seconds == 10.0 and args.workers == 1


def test_presence_defaults_are_the_issue_s() -> None:
    args = cli.build_parser().parse_args(["presence"])
    assert (args.relays, args.watchers, args.rate, args.seconds) == (3, 10, 1000.0, 15.0)
    assert args.lease == 10.0 and args.crash_sessions == 100 and args.topics == 1


@pytest.mark.parametrize(
    ("text", "rates"), [("500", [500.0]), ("250,500,1000", [250.0, 500.0, 1000.0]), ("0", [])]
)
def test_sustain_rates(text: str, rates: list[float]) -> None:
    assert cli.build_parser().parse_args(["events", "--sustain-rates", text]).sustain_rates == rates


@pytest.mark.parametrize("text", ["", "fast", "-5", "100,0", "1e9", "nan"])
def test_bad_sustain_rates(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["events", "--sustain-rates", text])
    assert exc.value.code == 2
    assert "--sustain-rates" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["events", "--renames", "-1"], "--renames"),
        (["events", "--interval", "-0.5"], "--interval"),
        (["events", "--sustain-seconds", "0"], "--sustain-seconds"),
        (["presence", "--rate", "0"], "--rate"),
        (["presence", "--hold", "-1"], "--hold"),
        (["presence", "--lease", "3"], "at least 5 s"),
        (["presence", "--pool", "-1"], "--pool"),
        (["presence", "--crash-sessions", "-1"], "--crash-sessions"),
        (["presence", "--pool", "30", "--crash-sessions", "11"], "only 10 pool sessions"),
    ],
)
def test_bad_options_stop_before_anything_starts(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert says in capsys.readouterr().err


@given(
    st.floats(min_value=0.1, max_value=10_000),
    st.floats(min_value=0, max_value=10),
    st.integers(min_value=1, max_value=9),
    st.integers(min_value=0, max_value=1000),
)
def test_auto_pool_holds_the_present_a_second_of_churn_and_the_crash(
    rate: float, hold: float, relays: int, crash: int
) -> None:
    pool = beyond.auto_pool(rate, hold, relays, crash)
    assert pool >= rate * (hold + 1.0) and pool >= 10 * relays
    assert pool // relays >= crash  # the crash members fit on the first relay
    assert pool <= max(10 * relays, rate * (hold + 1.0) + 1, crash * relays)


def test_the_default_crash_fits_a_slow_churn() -> None:
    args = cli.build_parser().parse_args(["presence", "--rate", "100"])
    assert cli._beyond_problem(args) is None


# -- aggregation --------------------------------------------------------------------------------


def test_medians_ignore_unknown_values() -> None:
    got = beyond.medians([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 2.0}, {"a": 2.0, "b": 4.0}])
    assert got == {"a": 2.0, "b": 3.0}
    assert beyond.medians([]) == {}


def test_sustained_rows_per_rate() -> None:
    slow = sustain_run(
        rate=1000.0,
        phase=phase(planned=100, writes=100, all_ms=[float(i * 20) for i in range(100)]),
    )
    runs = [
        events_run(sustain=[sustain_run(), slow]),
        events_run(sustain=[sustain_run(), sustain_run(rate=1000.0, failed=1)]),
    ]
    rows = {row["rate"]: row for row in beyond._sustain_rows(runs)}
    assert set(rows) == {100.0, 1000.0}
    assert rows[100.0]["kept_up_runs"] == 2 and rows[100.0]["exact"]
    assert rows[1000.0]["kept_up_runs"] == 1  # the slow run fell behind
    assert not rows[1000.0]["exact"] and rows[1000.0]["lost"] == 1


def test_events_totals_add_every_loss() -> None:
    totals = beyond._events_totals(
        [events_run(events=phase(missing=2)), events_run(rows=phase("rename", duplicates=1))]
    )
    assert not totals["exact"]
    assert (totals["lost"], totals["duplicates"]) == (2, 1)
    assert totals["checked"] == 20 and totals["events"] == 3 and totals["renames"] == 3


def test_presence_totals_and_writes_per_change() -> None:
    totals = beyond._presence_totals([presence_run(), presence_run(converged=False)])
    assert not totals["complete"] and totals["converged_runs"] == 1
    assert totals["joins"] == 80
    per = totals["writes_per_change"]
    assert per["ddp_presence"] == {"ins": 0.5, "upd": 0.0, "del": 0.5}
    assert per["ddp_changelog"]["ins"] == 1.0 and per["ddp_channel"]["upd"] == 1.0


# -- tables -------------------------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_events_table(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [events_run()]
    agg = {
        **beyond.medians([r.summary() for r in runs]),
        "sessions": 10,
        **beyond._events_totals(runs),
    }
    beyond.print_events([agg], _args("events", "--runs", "1", "--events", "3", "--renames", "3"))
    beyond.print_sustain(beyond._sustain_rows(runs), _args("events", "--runs", "1"))
    out = capsys.readouterr().out
    assert "| 10 | event (chat.byBook) | 6.0 ms / 7.0 ms |" in out
    assert "| 10 | row (books.all) | 5.0 ms / 6.0 ms |" in out
    assert "views equal to the stream's history (3 events): 10/10" in out
    assert "| 100 | 2 | 3.0 ms / 3.0 ms |" in out and "| 1/1 runs | 0 / 0 / 0 |" in out
    assert "NOTE" not in out


def test_presence_table(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [presence_run(other_cpu_share=0.5)]
    agg = {
        **beyond.medians([r.summary() for r in runs]),
        "rate": 20.0,
        "pool": 30,
        "runs": 1,
        **beyond._presence_totals(runs),
    }
    beyond.print_presence([agg], _args("presence", "--runs", "1", "--crash-sessions", "3"))
    out = capsys.readouterr().out
    assert "| 20 / 20 (20) | 6.00 | 1.00 / 1.00 | 4.0 ms |" in out
    assert "| 4.4 / 4.5 s | 13% / 4% / 4% | yes |" in out
    assert "ddp_presence 0.50 ins + 0.50 del" in out and "ddp_presence_lease" not in out
    assert "NOTE: presence: the machine was not quiet (other processes up to 50%" in out
