"""``python -m loadtest.bench.scaling``: how far the cluster scales, computed from measurements.

The model of issue #15 (``docs/scaling.md`` explains it). Pure computation: it reads the
measured figures from ``docs/scaling-inputs.json`` (``--inputs``; every measured input
names the command that produced it, every assumption says why it is what it is) and, for
a deployment shape (relays, gunicorn workers per relay, sessions per worker, commits per
second, subscriptions per channel), computes the load on each shared component against
its capacity:

- **NOTIFY** on the primary: every notifying commit holds PostgreSQL's notify lock while it
  queues, and signals listening backends; measured as commits per second against
  listening connections and fitted as seconds per commit = ``a + b * listeners``. Which
  listeners count: up to PostgreSQL 18 every backend LISTENing on any channel of the
  database (``async.c``'s ``SignalBackends``), from 19 only those on the notified channel.
- **listening connections**: one backend each on the primary (a pooler cannot carry LISTEN).
- **the changelog**: the write side's added CPU per commit on the primary.
- **relay worker CPU**: deliveries to its sessions, and the commits of every channel it
  listens to (routed, even when they concern none of its sessions).
- **ZooKeeper**: writes per session start, end and reconnect, steady and while one relay
  is drained; the leader's sweep (the expiry index's due entries) and its reaps.

Then it finds which component breaks first as a scenario grows (relays added, the
per-session rates kept), and what each step of the design changes: before it, the
coordinator's leader swept every session record each minute (the first limit, which the
expiry index removed); then (i) one listener per pod shared by its workers, (ii)
partitioned channels, (iii) logical decoding of the changelog instead of NOTIFY.

Must not: start, connect to or measure anything; import Django, kazoo or the relay runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

#: The measured inputs, kept with the documentation they feed.
DEFAULT_INPUTS = Path(__file__).resolve().parents[2] / "docs" / "scaling-inputs.json"
#: Relays the search for the largest deployment goes up to.
MAX_RELAYS = 100_000

Listener = Literal["worker", "pod"]
Transport = Literal["notify", "logical"]
#: What the coordinator's leader reads every housekeeping run: every session record (as
#: built), or only an index of the records whose window ends (time buckets written at park).
Sweep = Literal["all", "expired"]


# -- the inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """Seconds a notifying commit holds the primary's notify path: ``a + b * listeners``."""

    a: float
    b: float

    def seconds(self, listeners: float) -> float:
        return self.a + self.b * listeners

    def ceiling(self, listeners: float) -> float:
        """Notifying commits per second with ``listeners`` signalled."""
        return 1.0 / self.seconds(listeners)


def fit_notify(points: list[tuple[float, float]]) -> Fit:
    """Seconds per commit ``t = 1/rate`` fitted as ``a + b * listeners`` over
    ``(listeners, commits/s)`` points, by least squares of the *relative* error (weights
    ``1/t**2``): the few-listener points, where a commit takes tens of microseconds, count
    as much as the 200-listener ones, where it takes milliseconds.

    An intercept below zero is taken as zero and the slope fitted through the origin: a
    commit never costs less than nothing."""
    if len(points) < 2:
        raise ValueError("a fit needs at least two points")
    xs = [float(n) for n, _ in points]
    ts = [1.0 / float(rate) for _, rate in points]
    ws = [1.0 / (t * t) for t in ts]
    sw = sum(ws)
    mean_x = sum(w * x for w, x in zip(ws, xs, strict=True)) / sw
    mean_t = sum(w * t for w, t in zip(ws, ts, strict=True)) / sw
    sxx = sum(w * (x - mean_x) ** 2 for w, x in zip(ws, xs, strict=True))
    if sxx == 0:
        raise ValueError("the points need at least two listener counts")
    b = sum(w * (x - mean_x) * (t - mean_t) for w, x, t in zip(ws, xs, ts, strict=True)) / sxx
    a = mean_t - b * mean_x
    if a < 0:
        b = sum(w * x * t for w, x, t in zip(ws, xs, ts, strict=True))
        b /= sum(w * x * x for w, x in zip(ws, xs, strict=True))
        a = 0.0
    return Fit(a, b)


@dataclass(frozen=True)
class Inputs:
    """What the model computes with: measured figures, then assumptions."""

    notify: Fit
    commit_s: float  # one notifying commit alone (1 writer, 1 listener): the lock's hold
    changelog_cpu_ms: float
    zk_writes_per_s: float  # the ensemble's cores over the leader's CPU per write
    zk_writes: dict[str, float]
    sweep_us_per_record: float
    reaps_per_s: float
    relay_us_per_delivery: float
    relay_us_per_commit: float
    # assumptions
    db_cores: float
    db_share: float
    worker_share: float
    leader_share: float
    housekeeping_s: float
    max_listeners: float
    resume_window_s: float
    decode_us_per_commit: float
    standby_cores: float
    wal_flush_s: float  # a durable commit's WAL flush, held under the notify lock
    idle_listener_share: float  # a listener on another channel, against one on the channel
    pod_listener_us_per_commit: float


def load_inputs(
    path: Path = DEFAULT_INPUTS, overrides: dict[str, float] | None = None
) -> tuple[Inputs, dict[str, Any]]:
    """The model's inputs from ``path`` (and the file's raw content, for the report);
    ``overrides`` replace the ``value`` of named inputs or assumptions (``--set``)."""
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    measured, assumed = raw["inputs"], raw["assumptions"]
    for name, number in (overrides or {}).items():
        if name in measured and "value" in measured[name]:
            measured[name]["value"] = number
        elif name in assumed:
            assumed[name]["value"] = number
        else:
            raise KeyError(f"no input or assumption with a single value named {name!r}")

    def value(name: str) -> float:
        entry = measured[name] if name in measured else assumed[name]
        return float(entry["value"])

    def points(name: str) -> list[tuple[float, float]]:
        return [(float(n), float(rate)) for n, rate in measured[name]["points"]]

    inputs = Inputs(
        notify=fit_notify(points("notify_4_writers")),
        commit_s=1.0 / min(points("notify_1_writer"))[1],
        changelog_cpu_ms=value("changelog_cpu_ms"),
        zk_writes_per_s=value("zookeeper_cores") * 1e6 / value("zookeeper_cpu_us_per_write"),
        zk_writes={k: float(v) for k, v in measured["zookeeper_writes_per_step"]["value"].items()},
        sweep_us_per_record=value("zookeeper_sweep_us_per_record"),
        reaps_per_s=value("zookeeper_reaps_per_s"),
        relay_us_per_delivery=value("relay_us_per_delivery"),
        relay_us_per_commit=value("relay_us_per_commit"),
        db_cores=value("db_cores"),
        db_share=value("db_share"),
        worker_share=value("worker_share"),
        leader_share=value("leader_share"),
        housekeeping_s=value("housekeeping_s"),
        max_listeners=value("max_listeners"),
        resume_window_s=value("resume_window_s"),
        decode_us_per_commit=value("decode_us_per_commit"),
        standby_cores=value("standby_cores"),
        wal_flush_s=value("wal_flush_ms") / 1000.0,
        idle_listener_share=value("idle_listener_share"),
        pod_listener_us_per_commit=value("pod_listener_us_per_commit"),
    )
    return inputs, raw


# -- a deployment ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """One deployment and its load: the issue's five figures, then how it is built.

    ``subscriptions_per_channel``: sessions subscribed to the hot channel (to each partition
    of it, when partitioned). ``deliveries_per_commit``: sessions each commit reaches (all
    the subscribers for a feed; a room's members for per-room data)."""

    relays: int
    workers_per_relay: int
    sessions_per_worker: int
    commits_per_s: float
    subscriptions_per_channel: float
    deliveries_per_commit: float
    partitions: int = 1
    listener: Listener = "worker"
    postgres: int = 15
    transport: Transport = "notify"
    durable: bool = False
    session_lifetime_s: float = 1800.0
    reconnects_per_hour: float = 1.0
    drain_s: float = 30.0
    sweep: Sweep = "expired"

    @property
    def workers(self) -> int:
        return self.relays * self.workers_per_relay

    @property
    def sessions(self) -> int:
        return self.workers * self.sessions_per_worker


def occupied(bins: float, balls: float) -> float:
    """Expected bins holding at least one of ``balls`` placed uniformly at random: the
    workers (or pods) hosting a channel's subscribers under a round-robin balancer."""
    if bins <= 1:
        return min(1.0, bins) if balls > 0 else 0.0
    return bins * (1.0 - math.exp(balls * math.log1p(-1.0 / bins)))


def channel_listeners(shape: Shape) -> float:
    """Listening processes that receive each commit of the hot channel."""
    hosts = shape.relays if shape.listener == "pod" else shape.workers
    return occupied(hosts, shape.subscriptions_per_channel)


def database_listeners(shape: Shape) -> float:
    """LISTENing backends on the primary: one per worker, or one per pod."""
    return float(shape.relays if shape.listener == "pod" else shape.workers)


def notified(shape: Shape, inputs: Inputs) -> float:
    """Listeners a notifying commit costs, counted in listeners of its own channel.

    PostgreSQL up to 18 signals every listening backend of the database; one LISTENing
    on other channels only costs ``idle_listener_share`` of one on the channel (it wakes,
    reads the queue and skips). From 19 only the channel's listeners are signalled."""
    heard = channel_listeners(shape)
    if shape.postgres >= 19:
        return heard
    return heard + inputs.idle_listener_share * max(0.0, database_listeners(shape) - heard)


@dataclass(frozen=True)
class Load:
    """One component: ``demand`` against ``capacity``, in ``unit``."""

    component: str
    demand: float
    capacity: float
    unit: str
    note: str = ""

    @property
    def utilisation(self) -> float:
        return self.demand / self.capacity if self.capacity > 0 else math.inf


def loads(shape: Shape, inputs: Inputs) -> list[Load]:
    """The load on every shared component of ``shape``."""
    out: list[Load] = []
    commits = shape.commits_per_s
    per_partition = commits / shape.partitions
    heard = channel_listeners(shape)
    flush = inputs.wal_flush_s if shape.durable else 0.0
    if shape.transport == "notify":
        signalled = notified(shape, inputs)
        out.append(
            Load(
                "NOTIFY (primary's notify lock)",
                commits,
                1.0 / (inputs.notify.seconds(signalled) + flush),
                "commits/s",
                f"{heard:,.0f} listeners on the channel, "
                + (
                    f"{database_listeners(shape) - heard:,.0f} others signalled too"
                    if shape.postgres < 19
                    else "only they are signalled"
                )
                + (f"; {flush * 1000:g} ms WAL flush under the lock" if flush else ""),
            )
        )
        out.append(
            Load(
                "listening connections (primary)",
                database_listeners(shape),
                inputs.max_listeners,
                "backends",
                "one per " + shape.listener + "; no pooler carries LISTEN",
            )
        )
    else:
        hold = inputs.commit_s + flush
        out.append(
            Load(
                "channel counter row lock",
                per_partition,
                1.0 / hold,
                "commits/s per channel",
                "ddp_channel's row is locked from the flush to the commit",
            )
        )
        # One slot per pod (or per worker), on standbys: each slot's walsender (one
        # process) decodes every commit; the standbys needed grow with the slots.
        slots = database_listeners(shape)
        per_slot = commits * inputs.decode_us_per_commit / 1e6
        standbys = math.ceil(slots * per_slot / inputs.standby_cores)
        out.append(
            Load(
                "logical decoding (one slot)",
                per_slot,
                inputs.worker_share,
                "cores per walsender",
                f"{slots:,.0f} slots decode every commit: {standbys:,} standby(s) of "
                f"{inputs.standby_cores:g} cores",
            )
        )
    out.append(
        Load(
            "changelog (primary CPU)",
            commits * inputs.changelog_cpu_ms / 1000.0,
            inputs.db_cores * inputs.db_share,
            "cores",
            "the write side's triggers, changelog row and counter per commit",
        )
    )
    deliveries = commits * shape.deliveries_per_commit / shape.workers
    # Each listening process gets every commit of the channels it listens to; with one
    # listener per pod, its workers still decode the commits their sessions need.
    received = per_partition * occupied(shape.workers, shape.subscriptions_per_channel)
    received *= shape.partitions / shape.workers
    worker_cpu = (
        deliveries * inputs.relay_us_per_delivery + received * inputs.relay_us_per_commit
    ) / 1e6
    out.append(
        Load(
            "relay worker CPU",
            worker_cpu,
            inputs.worker_share,
            "cores per worker",
            f"{deliveries:,.0f} deliveries/s and {received:,.0f} commits/s routed per worker",
        )
    )
    if shape.listener == "pod":
        if shape.transport == "logical":  # a slot streams every commit of the database
            pod_commits = commits
        else:  # NOTIFY brings the channels (partitions) the pod's workers LISTEN to
            pod_commits = per_partition * occupied(shape.relays, shape.subscriptions_per_channel)
            pod_commits *= shape.partitions / shape.relays
        out.append(
            Load(
                "pod listener CPU",
                pod_commits * inputs.pod_listener_us_per_commit / 1e6,
                inputs.worker_share,
                "cores per pod",
                f"{pod_commits:,.0f} commits/s read and handed to the pod's workers",
            )
        )
    sessions = shape.sessions
    w = inputs.zk_writes
    # An expiry index costs a write per park (its entry) and one per reap (entry deleted).
    index = 1.0 if shape.sweep == "expired" else 0.0
    park, reap = w["park"] + index, w["reap"] + index
    starts = sessions / shape.session_lifetime_s
    reconnects = sessions * shape.reconnects_per_hour / 3600.0
    steady = starts * (w["create"] + park + reap) + reconnects * (park + w["resume"])
    out.append(
        Load(
            "ZooKeeper writes (steady)",
            steady,
            inputs.zk_writes_per_s,
            "writes/s",
            f"{starts:,.0f} session starts/s, {reconnects:,.0f} resumes/s",
        )
    )
    drained = shape.workers_per_relay * shape.sessions_per_worker * (park + w["resume"])
    out.append(
        Load(
            "ZooKeeper writes (one relay drained)",
            steady + drained / shape.drain_s,
            inputs.zk_writes_per_s,
            "writes/s",
            f"a relay's sessions parked and resumed elsewhere within {shape.drain_s:g} s",
        )
    )
    # "all": every record, the live sessions' and the parked ones' in their window;
    # "expired": the index entries of the sessions that ended since the last run.
    records = (
        sessions * (1.0 + inputs.resume_window_s / shape.session_lifetime_s)
        if shape.sweep == "all"
        else starts * inputs.housekeeping_s
    )
    out.append(
        Load(
            "coordinator leader's sweep",
            records * inputs.sweep_us_per_record / 1e6 / inputs.housekeeping_s,
            inputs.leader_share,
            "cores of the leader worker",
            f"{records:,.0f} records read every {inputs.housekeeping_s:g} s ({shape.sweep})",
        )
    )
    out.append(
        Load(
            "coordinator leader's reaps",
            starts,
            inputs.reaps_per_s,
            "reaps/s",
            "one after another, two requests each",
        )
    )
    return out


def first_limit(found: list[Load]) -> Load:
    """The most loaded component."""
    return max(found, key=lambda load: load.utilisation)


# -- scenarios: a deployment that grows --------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A workload whose deployment grows by relays, its per-session rates kept.

    ``commits_per_s`` fixed plus ``commits_per_session_per_s`` per session; a share of the
    sessions subscribe the hot model; each commit reaches ``room`` of them (None: all, a
    feed)."""

    name: str
    workers_per_relay: int = 2
    sessions_per_worker: int = 5000
    commits_per_s: float = 0.0
    commits_per_session_per_s: float = 0.0
    subscribed_share: float = 1.0
    room: float | None = None
    partitions: int = 1
    listener: Listener = "worker"
    postgres: int = 15
    transport: Transport = "notify"
    durable: bool = False
    session_lifetime_s: float = 1800.0
    reconnects_per_hour: float = 1.0
    drain_s: float = 30.0
    sweep: Sweep = "expired"

    def at(self, relays: int) -> Shape:
        sessions = relays * self.workers_per_relay * self.sessions_per_worker
        subscribers = sessions * self.subscribed_share
        if self.room is None:  # a feed: every subscriber needs every partition
            per_channel, reach = subscribers, subscribers
        else:
            reach = min(self.room, subscribers)
            per_channel = max(reach, subscribers / self.partitions)
        return Shape(
            relays=relays,
            workers_per_relay=self.workers_per_relay,
            sessions_per_worker=self.sessions_per_worker,
            commits_per_s=self.commits_per_s + self.commits_per_session_per_s * sessions,
            subscriptions_per_channel=per_channel,
            deliveries_per_commit=reach,
            partitions=self.partitions,
            listener=self.listener,
            postgres=self.postgres,
            transport=self.transport,
            durable=self.durable,
            session_lifetime_s=self.session_lifetime_s,
            reconnects_per_hour=self.reconnects_per_hour,
            drain_s=self.drain_s,
            sweep=self.sweep,
        )


def scenario_from(name: str, raw: dict[str, Any]) -> Scenario:
    known = {f.name for f in fields(Scenario)}
    return Scenario(name=name, **{k: v for k, v in raw.items() if k in known})


def fits(scenario: Scenario, relays: int, inputs: Inputs) -> bool:
    return all(load.utilisation <= 1.0 for load in loads(scenario.at(relays), inputs))


def largest(scenario: Scenario, inputs: Inputs, limit: int = MAX_RELAYS) -> tuple[int, Load]:
    """The most relays ``scenario`` runs on with every component within its capacity (0:
    not even one), and the component that breaks at one relay more. Loads grow with relays,
    so the search doubles, then bisects."""
    if not fits(scenario, 1, inputs):
        return 0, first_limit(loads(scenario.at(1), inputs))
    low, high = 1, 2
    while high <= limit and fits(scenario, high, inputs):
        low, high = high, high * 2
    if high > limit:
        return limit, first_limit(loads(scenario.at(limit), inputs))
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(scenario, middle, inputs) else (low, middle)
    return low, first_limit(loads(scenario.at(high), inputs))


#: Partitions of a hot channel: a 16-bit hash of the routing key (``..._p17``).
PARTITIONS = 65_536

#: The design's steps, each applied on top of the previous ones.
_POD: dict[str, Any] = {"listener": "pod"}
_PARTITIONS: dict[str, Any] = {**_POD, "partitions": PARTITIONS}
STEPS: list[tuple[str, dict[str, Any]]] = [
    ("before the expiry index: the leader read every record each minute", {"sweep": "all"}),
    ("as built: a listener per worker, one channel per model, the expiry index", {}),
    ("(i) + one listener per pod", _POD),
    (f"(ii) + {PARTITIONS:,} partitions of the hot channel", _PARTITIONS),
    (
        "(ii) on PostgreSQL 19: only the channel's listeners signalled",
        {**_PARTITIONS, "postgres": 19},
    ),
    (
        "(iii) + logical decoding instead of NOTIFY, a slot per pod",
        {**_PARTITIONS, "transport": "logical"},
    ),
]


def step_rows(scenario: Scenario, inputs: Inputs) -> list[dict[str, Any]]:
    """The largest deployment of ``scenario`` under each of ``STEPS``."""
    rows = []
    for label, change in STEPS:
        variant = replace(scenario, **change)
        relays, breaks = largest(variant, inputs)
        shape = variant.at(max(1, relays))
        rows.append(
            {
                "step": label,
                "relays": relays,
                "sessions": shape.sessions if relays else 0,
                "commits_per_s": shape.commits_per_s if relays else 0.0,
                "subscriptions_per_channel": shape.subscriptions_per_channel if relays else 0.0,
                "breaks": breaks.component,
                "note": breaks.note,
            }
        )
    return rows


# -- printing ----------------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 else f"{value:.3g}"


def table(shape: Shape, inputs: Inputs) -> list[str]:
    """Markdown: the load on each component of ``shape``, the first limit marked."""
    found = loads(shape, inputs)
    worst = first_limit(found)
    lines = [
        f"{shape.relays:,} relays x {shape.workers_per_relay} workers x "
        f"{shape.sessions_per_worker:,} sessions = {shape.sessions:,} sessions; "
        f"{_n(shape.commits_per_s)} commits/s; {_n(shape.subscriptions_per_channel)} "
        f"subscriptions per channel, {_n(shape.deliveries_per_commit)} deliveries per commit; "
        f"listener per {shape.listener}, {shape.partitions} partition(s), PostgreSQL "
        f"{shape.postgres}, {shape.transport}, {'durable' if shape.durable else 'fsync off'}",
        "",
        "| component | demand | capacity | unit | use | |",
        "|---|---:|---:|---|---:|---|",
    ]
    for load in found:
        mark = "**first limit**" if load is worst else ""
        lines.append(
            f"| {load.component} | {_n(load.demand)} | {_n(load.capacity)} | {load.unit} "
            f"| {load.utilisation:.0%} | {mark} {load.note} |"
        )
    return lines


def summary(scenarios: dict[str, Scenario], inputs: Inputs) -> list[str]:
    lines: list[str] = []
    for name, scenario in scenarios.items():
        lines += [
            "",
            f"### {name}",
            "",
            "| step | largest: relays | sessions | commits/s | subscriptions per channel "
            "| breaks first at one relay more |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in step_rows(scenario, inputs):
            relays = f"{row['relays']:,}" + ("+" if row["relays"] >= MAX_RELAYS else "")
            lines.append(
                f"| {row['step']} | {relays} | {row['sessions']:,} "
                f"| {_n(row['commits_per_s'])} | {_n(row['subscriptions_per_channel'])} "
                f"| {row['breaks']}: {row['note']} |"
            )
    return lines


def fits_text(inputs: Inputs) -> list[str]:
    fit = inputs.notify
    return [
        f"NOTIFY fit: {fit.a * 1e6:.1f} µs + {fit.b * 1e6:.2f} µs per listener per commit: "
        f"{fit.ceiling(1):,.0f} commits/s with 1 listener, {fit.ceiling(100):,.0f} with 100, "
        f"{fit.ceiling(1000):,.0f} with 1,000 (fsync off; a durable commit adds its WAL "
        f"flush, {inputs.wal_flush_s * 1000:g} ms assumed, under the same lock)"
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench.scaling",
        description="The scaling model: per scenario, the largest deployment under each step "
        "of the design; or, given --relays, the load on every component of one shape.",
    )
    parser.add_argument("--inputs", type=Path, default=DEFAULT_INPUTS)
    parser.add_argument("--relays", type=int, default=None, help="one shape: this many relays")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per relay")
    parser.add_argument("--sessions", type=int, default=5000, help="sessions per worker")
    parser.add_argument("--commits", type=float, default=100.0, help="commits/s, cluster-wide")
    parser.add_argument(
        "--subs", type=float, default=None, help="subscriptions per channel (default: all)"
    )
    parser.add_argument(
        "--deliveries", type=float, default=None, help="sessions a commit reaches (default --subs)"
    )
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--listener", choices=["worker", "pod"], default="worker")
    parser.add_argument("--postgres", type=int, default=15, help="major version")
    parser.add_argument("--transport", choices=["notify", "logical"], default="notify")
    parser.add_argument("--durable", action="store_true", help="synchronous, fsynced commits")
    parser.add_argument(
        "--sweep",
        choices=["all", "expired"],
        default="expired",
        help="what the leader sweeps: the expiry index (as built) or every record (before)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace an input's or an assumption's value (repeatable)",
    )
    return parser


def _overrides(pairs: list[str]) -> dict[str, float]:
    out = {}
    for pair in pairs:
        name, sep, number = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: NAME=VALUE")
        out[name.strip()] = float(number)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    inputs, raw = load_inputs(args.inputs, _overrides(args.set))
    for line in fits_text(inputs):
        print(line)
    if args.relays is not None:
        sessions = args.relays * args.workers * args.sessions
        subs = sessions if args.subs is None else args.subs
        shape = Shape(
            relays=args.relays,
            workers_per_relay=args.workers,
            sessions_per_worker=args.sessions,
            commits_per_s=args.commits,
            subscriptions_per_channel=subs,
            deliveries_per_commit=subs if args.deliveries is None else args.deliveries,
            partitions=args.partitions,
            listener=args.listener,
            postgres=args.postgres,
            transport=args.transport,
            durable=args.durable,
            sweep=args.sweep,
        )
        print()
        for line in table(shape, inputs):
            print(line)
        return 0
    scenarios = {name: scenario_from(name, s) for name, s in raw["scenarios"].items()}
    for line in summary(scenarios, inputs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
