"""``python -m loadtest.probe <attack>``: issue 9's outside probe of ``make run``, rerun.

Starts what ``make run`` starts, on loopback and throwaway (``loadtest.bench.stack``: an
embedded PostgreSQL with the example migrated and seeded, gunicorn with 2 relay workers,
a SQLite coordinator file shared by the workers, log level ``info``), then runs ONE attack
from another process while an honest client (``honest.HonestMonitor``, from another
client address) measures, and prints the checks, a table per worker and per phase, and
one JSON line (last line of stdout; also ``<workdir>/results.json``)::

    .venv/bin/python -m loadtest.probe queue                  # one client, 600 x 1 MB
    .venv/bin/python -m loadtest.probe queue --clients 50     # 50 clients, one address
    .venv/bin/python -m loadtest.probe orm                    # 24 x books.slowRename(15 s)
    .venv/bin/python -m loadtest.probe park                   # 50 connect/sub/drop cycles
    .venv/bin/python -m loadtest.probe fuzz                   # 100,000 frames
    .venv/bin/python -m loadtest.probe login                  # password guesses

A run: stack up, live check, the honest client starts (``--baseline`` seconds alone),
each worker's RSS high-water mark is reset, the attacker process starts; from its
"engaged" to the end of the run (``--after`` seconds after it finished) every sample
counts against the targets (``report``). Exit status: 0 when every check holds, 1 when
one does not, 2 when the probe could not run.

``run_probe`` is the same as a function on a started ``Stack`` (the end-to-end smoke test
runs two attacks on one stack with it).

Must not: tune an attack to pass; change the relay's settings beyond what ``make run``
sets (``--env NAME=VALUE`` is there to try a setting, and is printed with the results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import queue as queue_module
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from loadtest.bench.runner import live_check, machine
from loadtest.bench.stack import (
    BenchError,
    Cleanup,
    Database,
    Relay,
    children,
    cpu_seconds,
    machine_cpu_seconds,
    make_workdir,
    raise_fd_limit,
)
from loadtest.probe import attacks, procfs, report
from loadtest.probe.honest import HonestMonitor, HonestReport

ATTACKS = ("queue", "orm", "park", "fuzz", "login")
#: Counters of the relay's /metrics worth reporting after an attack.
METRICS = (
    "ddp_relay_limited_total",
    "ddp_relay_disconnects_total",
    "ddp_relay_protocol_errors_total",
)


class ProbeError(RuntimeError):
    """The probe could not run (not: a target was missed)."""


@dataclass
class Stack:
    """What ``make run`` runs: the database and a relay of ``workers`` workers."""

    db: Database
    relay: Relay
    workdir: Path
    cleanup: Cleanup
    env: dict[str, str]
    book_ids: list[str]
    author_ids: list[str]

    def workers(self) -> list[int]:
        """The relay's worker pids now (gunicorn replaces a worker that died)."""
        return sorted(children(self.relay.proc.pid))


def start_stack(
    workdir: Path,
    cleanup: Cleanup,
    *,
    workers: int = 2,
    log_level: str = "info",
    env: dict[str, str] | None = None,
) -> Stack:
    """The database and relay (``make run``'s set-up, on a free port); a live check."""
    db = Database(workdir, cleanup)
    relay_env = {
        # As make run: the workers of the node share session ownership in one file.
        "RELAY_COORDINATOR_PATH": str(workdir / "coordinator.sqlite"),
        "RELAY_LOG_LEVEL": log_level,
        **(env or {}),
    }
    relay = Relay(db.url, workdir, cleanup, max_sessions=5000, workers=workers, env=relay_env)
    live_check(relay)
    conn = psycopg2.connect(db.url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM bookstore_book ORDER BY id")
            books = [str(r[0]) for r in cur.fetchall()]
            cur.execute("SELECT id FROM bookstore_author ORDER BY id")
            authors = [str(r[0]) for r in cur.fetchall()]
    finally:
        conn.close()
    if len(books) < 2:
        raise ProbeError("the seeded database has fewer than two books")
    return Stack(db, relay, workdir, cleanup, relay_env, books, authors)


@dataclass
class Options:
    """What every attack shares."""

    honest_source: str = "127.0.0.2"
    attacker_source: str = "127.0.0.1"
    baseline: float = 3.0
    after: float = 3.0
    write_interval: float = 0.25
    probe_interval: float = 0.5
    ping_interval: float = 0.25
    limits: report.Limits = field(default_factory=report.Limits)
    quiet: bool = False


def attack_config(stack: Stack, attack: str, args: argparse.Namespace, source: str) -> Any:
    """The attacker's config from the command line. The honest client renames the first
    seeded book; the attacker never touches it."""
    url = stack.relay.ws_url
    others = tuple(stack.book_ids[1:])
    if attack == "queue":
        return attacks.QueueConfig(
            url, source, args.clients, args.messages, args.message_bytes, args.slow_ms,
            others[0], args.seconds, args.payload, args.read,
        )  # fmt: skip
    if attack == "orm":
        return attacks.OrmConfig(url, source, args.sessions, args.slow_ms, others[0], args.seconds)
    if attack == "park":
        return attacks.ParkConfig(
            url, source, args.cycles, args.fill, args.fill_bytes, args.seconds
        )
    if attack == "fuzz":
        return attacks.FuzzConfig(
            url, source, args.frames, args.connections, args.seed, args.seconds,
            book_ids=others, author_ids=tuple(stack.author_ids),
        )  # fmt: skip
    if attack == "login":
        return attacks.LoginConfig(
            url, source, args.clients, args.burst, args.username, args.seconds
        )
    raise ProbeError(f"unknown attack {attack!r}")


# -- samplers that run beside the attack -----------------------------------------------------


class Sidecar:
    """Every half second: attacker sockets per worker (/proc) and the parked-session
    table (rows, ``pg_total_relation_size``)."""

    def __init__(self, stack: Stack, attacker: str) -> None:
        self.stack = stack
        self.attacker = attacker
        self.sockets: dict[int, int] = {}
        self.parked: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._conn = psycopg2.connect(stack.db.url)
        self._conn.autocommit = True
        self._thread = threading.Thread(target=self._run, daemon=True)

    def parked_now(self) -> tuple[int, int]:
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT count(*), pg_total_relation_size('ddp_parked_session')"
                " FROM ddp_parked_session"
            )
            row = cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def start(self) -> Sidecar:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            port = self.stack.relay.port
            for pid, n in procfs.connections_by_worker(
                self.attacker, port, self.stack.workers()
            ).items():
                self.sockets[pid] = max(self.sockets.get(pid, 0), n)
            with contextlib.suppress(psycopg2.Error):
                rows, size = self.parked_now()
                self.parked.append((time.time(), rows, size))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def close(self) -> None:
        self._conn.close()


def metrics(stack: Stack) -> dict[str, float]:
    try:
        with urllib.request.urlopen(stack.relay.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError:
        return {}
    return report.parse_metrics(text, METRICS)


def _say(options: Options, text: str) -> None:
    if not options.quiet:
        print(text, flush=True)


def run_attacker(
    attack: str, config: Any, options: Options, timeout: float
) -> tuple[float, float, dict[str, Any]]:
    """Run the attack in a spawned process; (engaged at, done at, its summary)."""
    ctx = multiprocessing.get_context("spawn")
    events: Any = ctx.Queue()
    proc = ctx.Process(target=attacks.child, args=(attack, config, events), daemon=True)
    proc.start()
    engaged = math.nan
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                event, data = events.get(timeout=1.0)
            except queue_module.Empty:
                if not proc.is_alive():
                    raise ProbeError(f"the attacker process died ({proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise ProbeError(
                        f"the {attack} attack did not end in {timeout:.0f} s"
                    ) from None
                continue
            if event == "engaged":
                engaged = float(data["at"])
                _say(options, f"probe: {attack} engaged")
            elif event == "progress":
                _say(options, f"probe: {attack} {json.dumps(data)}")
            elif event == "error":
                raise ProbeError(f"the {attack} attack failed:\n{data['traceback']}")
            elif event == "done":
                done = time.time()
                return (engaged if engaged == engaged else done), done, data
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def run_probe(stack: Stack, attack: str, config: Any, options: Options) -> dict[str, Any]:
    """One attack against ``stack`` with the honest client measuring; the result (its
    ``checks`` say whether the targets hold)."""
    relay = stack.relay
    workers_before = stack.workers()
    monitor = HonestMonitor(
        relay.ws_url,
        stack.db.url,
        port=relay.port,
        workers=stack.workers,
        source=options.honest_source,
        write_interval=options.write_interval,
        probe_interval=options.probe_interval,
        ping_interval=options.ping_interval,
    )
    sidecar = Sidecar(stack, options.attacker_source)
    parked_before = sidecar.parked_now()
    began = time.time()
    monitor.start()
    _say(options, f"probe: honest client watching from {options.honest_source}")
    time.sleep(options.baseline)
    rss_before = {pid: procfs.memory(pid).get("VmRSS", 0) for pid in workers_before}
    exact = all(procfs.reset_peak(pid) for pid in workers_before)
    sampler = procfs.RssSampler(stack.workers).start()
    log_offset = relay.log_path.stat().st_size if relay.log_path.exists() else 0
    metrics_before = metrics(stack)
    sidecar.start()
    timeout = float(getattr(config, "seconds", 600.0)) + 300.0
    cpu_before, cpu_from = _cpu(stack), time.time()
    try:
        engaged, done, summary = run_attacker(attack, config, options, timeout)
        time.sleep(options.after)
        cpu = _cpu_share(cpu_before, _cpu(stack), time.time() - cpu_from)
    finally:
        sampler.stop()
        sidecar.stop()
        honest = monitor.stop()
    ended = time.time()
    if attack == "park":
        # Parking happens as each dropped session is torn down: let the last ones land.
        _settle_parked(sidecar)
    parked_after = sidecar.parked_now()
    sidecar.close()
    peaks = {}
    for pid in workers_before:
        hwm = procfs.memory(pid).get("VmHWM", 0) if exact else 0
        peaks[pid] = max(hwm, sampler.peak.get(pid, 0))
    with open(relay.log_path, errors="replace") as f:
        f.seek(log_offset)
        log = report.scan_log(f.read())
    metrics_delta = report.metric_delta(metrics_before, metrics(stack))
    workers_after = stack.workers()
    limits = options.limits
    checks = [report.rss_check(peaks, limits, exact)]
    checks += report.honest_checks(honest, engaged, limits)
    checks.append(
        report.Check(
            "relay workers alive (none replaced)",
            f"{workers_before} -> {workers_after}",
            "same pids",
            workers_before == workers_after and relay.proc.poll() is None,
        )
    )
    if attack == "fuzz":
        checks += report.fuzz_checks(summary, log.tracebacks, limits)
    else:
        checks.append(report.Check("tracebacks in the relay log", str(log.tracebacks), "—", None))
    parked = {
        "rows_before": parked_before[0],
        "bytes_before": parked_before[1],
        "rows_after": parked_after[0],
        "bytes_after": parked_after[1],
        "rows_max": max([r for _, r, _ in sidecar.parked] + [parked_after[0]]),
        "bytes_max": max([b for _, _, b in sidecar.parked] + [parked_after[1]]),
    }
    if attack == "park":
        cycles = max(1, int(summary.get("cycles", 0)))
        growth = parked["bytes_max"] - parked_before[1]
        checks.append(
            report.Check(
                "parked table growth (pg_total_relation_size)",
                f"{growth / report.MIB:.1f} MiB, {parked['rows_max'] - parked_before[0]} rows "
                f"for {summary.get('cycles', 0)} cycles "
                f"({growth / cycles / 1024:.0f} KiB per cycle)",
                "— (issue 9 found 170 MB for 50 cycles)",
                None,
            )
        )
    phases = [("baseline", began, engaged), ("attack", engaged, done), ("after", done, ended)]
    workers = _worker_rows(workers_before, honest, engaged, rss_before, peaks, sidecar.sockets)
    result: dict[str, Any] = {
        "attack": attack,
        "holds": all(c.holds is not False for c in checks),
        "checks": [asdict(c) for c in checks],
        "config": asdict(config),
        "attacker": {k: v for k, v in summary.items() if k != "evidence"},
        "evidence": summary.get("evidence", []),
        "workers": workers,
        "honest": _honest_summary(honest, phases),
        "parked": parked,
        "parked_series": sidecar.parked,
        "rss_series": sampler.series,
        "relay_log": asdict(log),
        "cpu": cpu,
        "metrics": metrics_delta,
        "phases": {name: [start, end] for name, start, end in phases},
        "honest_source": options.honest_source,
        "attacker_source": options.attacker_source,
        "relay_env": stack.env,
    }
    return result


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far: the machine's (all processes, and stolen), the relay workers',
    PostgreSQL's (per process), and this process's with its reaped children (the
    attacker process, once joined)."""
    machine_s, steal_s = machine_cpu_seconds()
    own = os.times()
    out = {
        "machine": machine_s,
        "steal": steal_s,
        "probe": own.user + own.system + own.children_user + own.children_system,
        "relay": sum(cpu_seconds(pid) for pid in stack.workers()),
    }
    for pid in stack.db.postgres_pids():
        value = cpu_seconds(pid)
        if value == value:
            out[f"pg{pid}"] = value
    return out


def _cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Cores used between two ``_cpu`` readings: by the relay, PostgreSQL, the probe
    (honest client and attacker), by everything else on the machine, and stolen."""
    postgres = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("pg"))
    used = {k: after[k] - before[k] for k in ("machine", "steal", "probe", "relay")}
    other = used["machine"] - used["relay"] - used["probe"] - postgres
    wall = max(wall, 1e-9)
    return {
        "relay_cores": used["relay"] / wall,
        "postgres_cores": postgres / wall,
        "probe_cores": used["probe"] / wall,
        "other_cores": max(0.0, other) / wall,
        "stolen_cores": used["steal"] / wall,
        "seconds": wall,
    }


def _settle_parked(sidecar: Sidecar, quiet_for: float = 3.0, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    last = sidecar.parked_now()
    steady = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - steady < quiet_for:
        time.sleep(0.5)
        now = sidecar.parked_now()
        if now != last:
            last, steady = now, time.monotonic()
        sidecar.parked.append((time.time(), *now))


def _worker_rows(
    pids: list[int],
    honest: HonestReport,
    engaged: float,
    rss_before: dict[int, int],
    peaks: dict[int, int],
    sockets: dict[int, int],
) -> list[dict[str, Any]]:
    rows = []
    for pid in pids:
        live = [s for s in report.between(honest.live, engaged) if s.worker == pid]
        live += [s for s in report.between(honest.first_live, engaged) if s.worker == pid]
        connected = [s for s in report.between(honest.connected, engaged) if s.worker == pid]
        ping = [s for s in report.between(honest.ping, engaged) if s.worker == pid]
        live_stats = report.stats(live)
        rows.append(
            {
                "pid": pid,
                "attacker_sockets": sockets.get(pid, 0),
                "rss_before": rss_before.get(pid, 0),
                "rss_peak": peaks.get(pid, 0),
                "live_n": live_stats.n,
                "live_p50": live_stats.p50,
                "live_max": live_stats.max,
                "connected_n": len(connected),
                "connected_max": report.stats(connected).max,
                "ping_max": report.stats(ping).max,
            }
        )
    return rows


def _honest_summary(honest: HonestReport, phases: list[tuple[str, float, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "writes": honest.writes,
        "commit_clock": honest.commit_clock,
        "probe_failures": honest.probe_failures[:50],
        "subscriber_closes": honest.subscriber_closes,
    }
    for name, start, end in phases:
        out[name] = {
            what: asdict(report.stats(report.between(getattr(honest, what), start, end)))
            for what in ("connected", "socket", "ready", "first_live", "live", "ping")
        }
    return out


def print_result(result: dict[str, Any], honest_phases: str) -> None:
    print(f"\n## {result['attack']}: {json.dumps(result['config'], default=str)}")
    print(report.checks_table([report.Check(**c) for c in result["checks"]]))
    print()
    print(report.workers_table(result["workers"]))
    print()
    print(honest_phases)
    if result["metrics"]:
        print("\nrelay counters that grew: " + ", ".join(
            f"{k} +{v:g}" for k, v in result["metrics"].items()
        ))  # fmt: skip
    cpu = result.get("cpu") or {}
    if cpu:
        print(
            "CPU from the attack to the end, in cores of 2: "
            + ", ".join(f"{k[:-6]} {v:.2f}" for k, v in cpu.items() if k.endswith("_cores"))
        )
    log = result["relay_log"]
    print(
        f"relay log during the attack: {log['lines']:,} lines, {log['tracebacks']} tracebacks, "
        f"{log['errors']} error lines"
    )
    attacker = result["attacker"]
    print(
        "attacker: "
        + json.dumps({k: v for k, v in attacker.items() if k != "config"}, default=str)[:1500]
    )
    if result["evidence"]:
        print(f"unanswered frames: {len(result['evidence'])} batches recorded in results.json")


# -- the command -------------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.probe",
        description="Attack a throwaway make-run stack (2 relay workers) while an honest "
        "client measures; check issue 9's hardening targets.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workers", type=_positive, default=2, help="relay workers (2)")
    common.add_argument("--out", type=Path, default=None, help="workdir (default: a temp dir)")
    common.add_argument("--json", type=Path, default=None, help="also write results here")
    common.add_argument("--honest-address", default="127.0.0.2", help="honest client's address")
    common.add_argument("--attacker-address", default="127.0.0.1", help="attackers' address")
    common.add_argument("--baseline", type=float, default=3.0, help="seconds measured before")
    common.add_argument("--after", type=float, default=3.0, help="seconds measured after")
    common.add_argument("--write-interval", type=float, default=0.25, help="honest renames")
    common.add_argument("--probe-interval", type=float, default=0.5, help="fresh honest clients")
    common.add_argument("--log-level", default="info", help="relay log level (make run: info)")
    common.add_argument(
        "--env", type=_env, action="append", default=[], help="NAME=VALUE for the relay"
    )
    common.add_argument("--rss-limit-mib", type=float, default=256.0)
    common.add_argument("--latency-limit-ms", type=float, default=250.0)
    common.add_argument("--quiet", action="store_true")
    commands = parser.add_subparsers(dest="attack", required=True)

    q = commands.add_parser("queue", parents=[common], help="a slow method, then ~1 MiB messages")
    q.add_argument("--clients", type=_positive, default=1)
    q.add_argument("--messages", type=_positive, default=600, help="per client")
    q.add_argument("--message-bytes", type=_positive, default=1_000_000)
    q.add_argument("--slow-ms", type=int, default=15_000)
    q.add_argument("--payload", choices=("param", "name", "sub"), default="param")
    q.add_argument("--no-read", dest="read", action="store_false", help="never read replies")
    q.add_argument("--seconds", type=float, default=120.0, help="at most")

    o = commands.add_parser("orm", parents=[common], help="sessions in 15-second methods")
    o.add_argument("--sessions", type=_positive, default=24)
    o.add_argument("--slow-ms", type=int, default=15_000)
    o.add_argument("--seconds", type=float, default=20.0)

    p = commands.add_parser("park", parents=[common], help="connect/subscribe/drop cycles")
    p.add_argument("--cycles", type=_positive, default=50)
    p.add_argument("--fill", type=int, default=500, help="replies per session before the drop")
    p.add_argument("--fill-bytes", type=_positive, default=4096, help="method name length")
    p.add_argument("--seconds", type=float, default=600.0, help="at most")

    f = commands.add_parser("fuzz", parents=[common], help="random and mutated frames")
    f.add_argument("--frames", type=_positive, default=100_000)
    f.add_argument("--connections", type=_positive, default=8)
    f.add_argument("--seed", type=int, default=1)
    f.add_argument("--seconds", type=float, default=900.0, help="at most")
    lg = commands.add_parser("login", parents=[common], help="password guesses (hashing cost)")
    lg.add_argument("--clients", type=_positive, default=1, help="sockets guessing at once")
    lg.add_argument("--burst", type=_positive, default=5, help="guesses per connection")
    lg.add_argument("--username", default="reader")
    lg.add_argument("--seconds", type=float, default=20.0)
    return parser


def options_from(args: argparse.Namespace) -> Options:
    limits = report.Limits(
        rss_bytes=int(args.rss_limit_mib * report.MIB),
        latency_ms=args.latency_limit_ms,
        fuzz_frames=getattr(args, "frames", 100_000),
    )
    return Options(
        honest_source=args.honest_address,
        attacker_source=args.attacker_address,
        baseline=args.baseline,
        after=args.after,
        write_interval=args.write_interval,
        probe_interval=args.probe_interval,
        limits=limits,
        quiet=args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_fd_limit()
    cleanup = Cleanup()
    cleanup.install_signal_handlers()
    workdir = make_workdir(args.out)
    options = options_from(args)
    command = " ".join(["python -m loadtest.probe", *(argv if argv is not None else sys.argv[1:])])
    _say(options, f"probe: workdir {workdir}")
    result: dict[str, Any] = {"command": command, "machine": machine()}
    try:
        stack = start_stack(
            workdir, cleanup, workers=args.workers, log_level=args.log_level, env=dict(args.env)
        )
        config = attack_config(stack, args.attack, args, options.attacker_source)
        result.update(run_probe(stack, args.attack, config, options))
        phases = [(n, s, e) for n, (s, e) in result["phases"].items()]
    except (BenchError, ProbeError, OSError, psycopg2.Error) as exc:
        print(f"probe: error: {exc}", file=sys.stderr)
        result["error"] = str(exc)
        print(report.json_line(result))
        return 2
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        return 130
    finally:
        cleanup.run()
        text = json.dumps(report.clean(result), indent=1, default=str)
        (workdir / "results.json").write_text(text)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(text)
    print_result(result, _phase_text(result, phases))
    print(f"probe: results in {workdir / 'results.json'}")
    print(
        report.json_line(
            {
                k: v
                for k, v in result.items()
                if k not in ("rss_series", "parked_series", "evidence")
            }
        )
    )
    return 0 if result["holds"] else 1


def _phase_text(result: dict[str, Any], phases: list[tuple[str, float, float]]) -> str:
    honest = result["honest"]
    rows = [
        "| phase | connected p50 / max | ready p50 / max | first live update p50 / max "
        "| live update p50 / p99 / max (n) | ping p50 / max |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, _, _ in phases:
        h = honest[name]
        ms = report.fmt_ms
        rows.append(
            f"| {name} | {ms(h['connected']['p50'])} / {ms(h['connected']['max'])} "
            f"| {ms(h['ready']['p50'])} / {ms(h['ready']['max'])} "
            f"| {ms(h['first_live']['p50'])} / {ms(h['first_live']['max'])} "
            f"| {ms(h['live']['p50'])} / {ms(h['live']['p99'])} / {ms(h['live']['max'])} "
            f"({h['live']['n']}) | {ms(h['ping']['p50'])} / {ms(h['ping']['max'])} |"
        )
    return "\n".join(rows)
