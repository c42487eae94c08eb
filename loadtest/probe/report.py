"""From measurements to verdicts: phases, statistics, the acceptance checks, the output.

Pure: it takes what ``honest``, ``procfs``, the attacker and the relay's log and metrics
gave, and returns plain data. The acceptance of issue 9 ("with 2 workers, no single
anonymous client (or 50 of them from one address) can take a worker past 256 MiB or
delay an honest client's ``connected`` or live update beyond 250 ms; a fuzz run of at
least 100,000 random and mutated frames leaves every well-formed-enough frame answered,
no traceback in the log, and an honest client's live updates on time") becomes
``Check``s, each judged on the worst sample of the attack (from the moment the attacker
is engaged to the end of the run, so what the relay still does after the attacker left
counts too), never on a median.

Must not: measure, start anything, or soften a limit (a missing sample fails its check).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from loadtest.bench.figures import quantile
from loadtest.probe.honest import HonestReport, Sample

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stats:
    n: int
    p50: float
    p99: float
    max: float
    #: Samples above the limit they are judged against (lost ones included).
    over: int
    #: Samples that never completed (infinite).
    lost: int


def stats(samples: Iterable[Sample], limit: float = math.inf) -> Stats:
    values = [s.ms for s in samples]
    finite = [v for v in values if math.isfinite(v)]
    return Stats(
        n=len(values),
        p50=quantile(values, 0.5),
        p99=quantile(values, 0.99),
        max=max(values) if values else math.nan,
        over=sum(1 for v in values if v > limit),
        lost=len(values) - len(finite),
    )


def between(samples: Iterable[Sample], start: float, end: float = math.inf) -> list[Sample]:
    return [s for s in samples if start <= s.at < end]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    measured: str
    target: str
    #: None: reported, no target.
    holds: bool | None
    detail: str = ""


@dataclass
class Limits:
    rss_bytes: int = 256 * MIB
    latency_ms: float = 250.0
    fuzz_frames: int = 100_000


def fmt_ms(value: float) -> str:
    if value != value:
        return "n/a"
    if math.isinf(value):
        return "never"
    return f"{value / 1000:.2f} s" if value >= 10_000 else f"{value:.0f} ms"


def latency_check(name: str, samples: Sequence[Sample], limit: float) -> Check:
    st = stats(samples, limit)
    if st.n == 0:
        return Check(name, "no samples", f"<= {limit:.0f} ms", False, "nothing was measured")
    return Check(
        name,
        f"max {fmt_ms(st.max)} (p50 {fmt_ms(st.p50)}, p99 {fmt_ms(st.p99)}, n={st.n})",
        f"<= {limit:.0f} ms",
        st.max <= limit,
        f"{st.over} of {st.n} over the limit, {st.lost} never arrived" if st.over else "",
    )


def honest_checks(report: HonestReport, engaged: float, limits: Limits) -> list[Check]:
    """The honest client's checks over the attack (``engaged`` to the end)."""
    live = between(report.live, engaged) + between(report.first_live, engaged)
    checks = [
        latency_check(
            "honest connected (socket, upgrade, connect)",
            between(report.connected, engaged),
            limits.latency_ms,
        ),
        latency_check("honest live update (commit to changed)", live, limits.latency_ms),
    ]
    closes = [c for c in report.subscriber_closes if c[0] >= engaged]
    checks.append(
        Check(
            "honest subscribers closed by the relay",
            str(len(closes)),
            "0",
            not closes,
        )
    )
    return checks


def rss_check(peaks: dict[int, int], limits: Limits, exact: bool) -> Check:
    if not peaks:
        return Check("worker peak RSS", "no samples", f"<= {limits.rss_bytes / MIB:.0f} MiB", False)
    worst_pid = max(peaks, key=lambda p: peaks[p])
    worst = peaks[worst_pid]
    return Check(
        "worker peak RSS" + ("" if exact else " (sampled: VmHWM could not be reset)"),
        f"{worst / MIB:.0f} MiB (worker {worst_pid}); "
        + ", ".join(f"{pid}: {v / MIB:.0f}" for pid, v in sorted(peaks.items())),
        f"<= {limits.rss_bytes / MIB:.0f} MiB",
        worst <= limits.rss_bytes,
    )


def fuzz_checks(summary: dict[str, Any], tracebacks: int, limits: Limits) -> list[Check]:
    connected, handshake = summary["connected"], summary["handshake"]
    missing = connected["missing_required"] + handshake["missing_required"]
    required = connected["required"] + handshake["required"]
    frames = summary["frames"]
    return [
        Check(
            "fuzz frames sent",
            f"{frames:,}",
            f">= {limits.fuzz_frames:,}",
            frames >= limits.fuzz_frames,
        ),
        Check(
            "well-formed frames unanswered",
            f"{missing:,} of {required:,}",
            "0",
            missing == 0,
            f"{connected['missing_required_cut'] + handshake['missing_required_cut']:,} of them "
            "in batches the relay cut short by closing the socket; all frames: "
            f"{connected['missing'] + handshake['missing']:,} answers missing, "
            f"{connected['extra'] + handshake['extra']:,} extra",
        ),
        Check("tracebacks in the relay log", str(tracebacks), "0", tracebacks == 0),
    ]


# -- the relay's log and metrics -----------------------------------------------------------


@dataclass
class LogScan:
    lines: int = 0
    tracebacks: int = 0
    errors: int = 0
    first_traceback: str = ""
    #: The most frequent lines, numbers and hex ids blanked (what floods the log).
    top: list[tuple[str, int]] = field(default_factory=list)


#: What differs between two log lines of one kind: numbers, hex ids (session tags).
_VARYING = re.compile(r"\b(?=\w*\d)[0-9a-f]{6,}\b|\d+")


def scan_log(text: str) -> LogScan:
    lines = text.splitlines()
    out = LogScan(lines=len(lines))
    out.tracebacks = sum(1 for line in lines if line.startswith("Traceback"))
    out.errors = sum(1 for line in lines if "[ERROR]" in line or " ERROR " in line)
    start = text.find("Traceback")
    if start >= 0:
        out.first_traceback = text[start : start + 3000]
    shapes: dict[str, int] = {}
    for line in lines:
        shape = _VARYING.sub("#", line)[:160]
        shapes[shape] = shapes.get(shape, 0) + 1
    out.top = sorted(shapes.items(), key=lambda kv: -kv[1])[:5]
    return out


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str, prefixes: Sequence[str]) -> dict[str, float]:
    """``name{labels}`` -> value of the Prometheus text samples whose name starts with
    one of ``prefixes``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None or not match.group(1).startswith(tuple(prefixes)):
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        key = match.group(1) + (match.group(2) or "")
        out[key] = out.get(key, 0.0) + value
    return out


def metric_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What grew between two readings (counters; labels that appeared count from 0)."""
    return {
        key: after[key] - before.get(key, 0.0)
        for key in sorted(after)
        if after[key] - before.get(key, 0.0) > 0
    }


# -- output ----------------------------------------------------------------------------------


def clean(value: Any) -> Any:
    """JSON without NaN or infinity (null instead) and with string keys."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return clean(asdict(value))
    return value


def json_line(result: dict[Any, Any]) -> str:
    return json.dumps(clean(result), separators=(",", ":"), sort_keys=True, allow_nan=False)


def checks_table(checks: Sequence[Check]) -> str:
    rows = ["| check | measured | target | holds |", "|---|---|---|---|"]
    for c in checks:
        verdict = "—" if c.holds is None else ("yes" if c.holds else "**NO**")
        measured = c.measured + (f" ({c.detail})" if c.detail else "")
        rows.append(f"| {c.name} | {measured} | {c.target} | {verdict} |")
    return "\n".join(rows)


def workers_table(rows: Sequence[dict[str, Any]]) -> str:
    out = [
        "| worker | attacker sockets (max) | RSS before | peak RSS | honest live p50 / max "
        "| honest connected max | honest ping max |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['pid']} | {r['attacker_sockets']} | {r['rss_before'] / MIB:.0f} MiB "
            f"| {r['rss_peak'] / MIB:.0f} MiB | {fmt_ms(r['live_p50'])} / {fmt_ms(r['live_max'])} "
            f"| {fmt_ms(r['connected_max'])} | {fmt_ms(r['ping_max'])} |"
        )
    return "\n".join(out)
