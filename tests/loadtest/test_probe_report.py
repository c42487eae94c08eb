"""``loadtest.probe.report``: statistics and verdicts are strict, and the output is clean.

A check is judged on the worst sample of the attack, never a median; a lost sample or
no sample at all fails it; exactly the limit passes. The log scan counts tracebacks and
the lines that flood; the metrics parser reads Prometheus text; the JSON line never
carries NaN or infinity.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from loadtest.probe import report
from loadtest.probe.honest import HonestReport, Sample


def samples(*values: float, at: float = 10.0, worker: int | None = 1) -> list[Sample]:
    return [Sample(at + i, v, worker) for i, v in enumerate(values)]


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1))
def test_stats_bounds(values: list[float]) -> None:
    st_ = report.stats(samples(*values), limit=250.0)
    assert st_.n == len(values)
    assert st_.p50 <= st_.p99 <= st_.max == max(values)
    assert st_.over == sum(1 for v in values if v > 250.0)
    assert st_.lost == 0


def test_a_lost_sample_is_infinite_and_over() -> None:
    st_ = report.stats(samples(1.0, math.inf), limit=250.0)
    assert (st_.lost, st_.over, st_.max) == (1, 1, math.inf)


def test_latency_check_is_judged_on_the_worst_sample() -> None:
    assert report.latency_check("x", samples(*[1.0] * 99, 250.0), 250.0).holds is True
    check = report.latency_check("x", samples(*[1.0] * 99, 250.5), 250.0)
    assert check.holds is False and "1 of 100 over" in check.detail
    assert report.latency_check("x", [], 250.0).holds is False


def test_honest_checks_count_only_the_attack() -> None:
    honest = HonestReport(
        connected=samples(900.0, at=1.0) + samples(5.0, at=20.0),
        live=samples(2.0, at=20.0),
        first_live=samples(300.0, at=21.0),
        subscriber_closes=[(5.0, 1)],
    )
    connected, live, closes = report.honest_checks(honest, engaged=10.0, limits=report.Limits())
    assert connected.holds is True  # the 900 ms sample was before the attack
    assert live.holds is False  # a fresh client's first update counts as a live update
    assert closes.holds is True


def test_rss_check() -> None:
    limits = report.Limits(rss_bytes=256 * report.MIB)
    ok = report.rss_check({1: 100 * report.MIB, 2: 256 * report.MIB}, limits, exact=True)
    assert ok.holds is True and "worker 2" in ok.measured
    bad = report.rss_check({1: 257 * report.MIB}, limits, exact=False)
    assert bad.holds is False and "sampled" in bad.name
    assert report.rss_check({}, limits, exact=True).holds is False


def _fuzz_summary(missing: int, frames: int) -> dict[str, object]:
    tally = {"missing_required": missing, "required": 10, "missing_required_cut": 0}
    tally |= {"missing": missing, "extra": 0}
    return {"connected": tally, "handshake": dict(tally, missing_required=0), "frames": frames}


def test_fuzz_checks() -> None:
    limits = report.Limits(fuzz_frames=100)
    sent, answered, tracebacks = report.fuzz_checks(_fuzz_summary(0, 100), 0, limits)
    assert sent.holds and answered.holds and tracebacks.holds
    sent, answered, tracebacks = report.fuzz_checks(_fuzz_summary(2, 99), 1, limits)
    assert not (sent.holds or answered.holds or tracebacks.holds)


def test_scan_log_counts_tracebacks_and_the_flood() -> None:
    text = "\n".join(
        ["2026 WARNING x: bad frame 1", "2026 WARNING x: bad frame 2"] * 3
        + ["Traceback (most recent call last):", '  File "a.py", line 1', "ValueError: x"]
        + ["2026 ERROR relay: method 'x' failed"]
    )
    scan = report.scan_log(text)
    assert (scan.lines, scan.tracebacks, scan.errors) == (10, 1, 1)
    assert scan.first_traceback.startswith("Traceback")
    assert scan.top[0] == ("# WARNING x: bad frame #", 6)


def test_parse_metrics_and_delta() -> None:
    before = report.parse_metrics(
        '# HELP x\nddp_relay_limited_total{limit="a"} 1.0\nother_total 5\n',
        ["ddp_relay_limited_total"],
    )
    after = report.parse_metrics(
        'ddp_relay_limited_total{limit="a"} 3.0\nddp_relay_limited_total{limit="b"} 2\n',
        ["ddp_relay_limited_total"],
    )
    assert before == {'ddp_relay_limited_total{limit="a"}': 1.0}
    assert report.metric_delta(before, after) == {
        'ddp_relay_limited_total{limit="a"}': 2.0,
        'ddp_relay_limited_total{limit="b"}': 2.0,
    }


def test_json_line_is_one_strict_line() -> None:
    line = report.json_line({"a": math.inf, "b": [math.nan, 1], 3: samples(1.0)})
    assert "\n" not in line
    assert json.loads(line) == {
        "a": None,
        "b": [None, 1],
        "3": [{"at": 10.0, "ms": 1.0, "worker": 1}],
    }


def test_tables_render_verdicts_and_workers() -> None:
    table = report.checks_table(
        [report.Check("a", "1", "0", False, "why"), report.Check("b", "2", "—", None)]
    )
    assert "| a | 1 (why) | 0 | **NO** |" in table and "| b | 2 | — | — |" in table
    row = {
        "pid": 7,
        "attacker_sockets": 3,
        "rss_before": 60 * report.MIB,
        "rss_peak": 70 * report.MIB,
        "live_p50": 1.0,
        "live_max": math.inf,
        "connected_max": 20_000.0,
        "ping_max": math.nan,
    }
    assert "| 7 | 3 | 60 MiB | 70 MiB | 1 ms / never | 20.00 s | n/a |" in report.workers_table(
        [row]
    )
