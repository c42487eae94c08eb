"""``presence``: membership churn across several relays, its database writes, convergence.

One run (``run_presence``):

1. ``relays`` fresh relays (default 3, ``--workers`` each) on the same database, each
   with ``DDP_PRESENCE_LEASE`` = ``lease``; the live check on each;
2. one ``presencegen.js``: ``watchers`` sessions per relay subscribe ``presence.book``
   on the first book (each is a member too), and a pool of connected, unsubscribed
   sessions spread over the relays; wait until every watcher sees every watcher;
3. the churn: ``rate`` joins a second for ``seconds``, each a random idle pool session
   (so a random relay) subscribing ``presence.book`` on a book drawn from ``topics``
   books (1: the watchers' own), unsubscribing ``hold`` seconds after its ``ready``.
   Measured meanwhile: the rows PostgreSQL wrote (``pg_stat_user_tables`` of the
   presence tables, the changelog, the pending queue and the channel counters), the
   NOTIFYs on the presence channel (a LISTEN connection counts them), the changelog
   rows, and the CPU of the relays, the generator and PostgreSQL;
4. convergence: from the last ``unsub`` sent until the last watcher's view last changed,
   provided every view then equals the database's members of the topic (polled until
   equal, at most ``converge_timeout``), and the database holds exactly the sessions
   still subscribed (every join left);
5. lag during the churn: each watcher's receipt of each join and leave of the topic,
   against the commit timestamp of the changelog row that carried it;
6. the crash (``crash_sessions`` > 0): that many pool sessions of the first relay join
   and stay, every watcher sees them, the first relay is SIGKILLed, and the time until
   the surviving watchers' views equal the members still connected (their holds expire
   with the dead worker's lease) and until the database does.

Presence state lives in PostgreSQL (``django_app.presence``): there are no coordinator
writes to count.

Must not: print tables (``beyond``) or parse options (``cli``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from loadtest.bench import dbwrites, figures
from loadtest.bench.generator import NodeProcess
from loadtest.bench.meter import CpuMeter
from loadtest.bench.runner import live_check
from loadtest.bench.stack import BenchError, Cleanup, Database, Relay
from relay.protocol.changestream import parse_changes

SCRIPT = Path(__file__).with_name("presencegen.js")
#: The tables a join or a leave may write, and the one only background chores write.
TABLES = (
    "ddp_presence",
    "ddp_presence_hold",
    "ddp_presence_lease",
    "ddp_pending",
    "ddp_changelog",
    "ddp_channel",
)
LEASE_TABLE = "ddp_presence_lease"
#: Seconds between two looks at the views while waiting for them to converge.
POLL_SECONDS = 0.25


@dataclass(kw_only=True)
class PresenceRun(figures.RelayRun):
    """The figures of one presence run (times in ms, CPU in seconds)."""

    relays: int
    watchers: int
    pool: int
    rate: float
    seconds: float
    hold_s: float
    topics: int
    lease_s: float
    ramp_s: float = 0.0
    topic: str = ""
    channel: str = ""
    # -- the churn
    started: int = 0
    joins: int = 0
    leaves: int = 0
    failed_joins: int = 0
    starved: int = 0
    lost_churners: int = 0
    churn_timed_out: bool = False
    #: From the churn's start until the last leave was acknowledged (or, without one, the
    #: last join was due): joins and leaves per second are over this.
    churn_s: float = math.nan
    join_p50_ms: float = math.nan
    join_p99_ms: float = math.nan
    leave_p50_ms: float = math.nan
    leave_p99_ms: float = math.nan
    # -- what the database wrote
    writes: dict[str, dict[str, int]] = field(default_factory=dict)
    writes_settled: bool = False
    changelog_rows: int = 0
    notifies: int = 0
    # -- convergence and lag on the watched topic
    converged: bool = False
    converge_ms: float = math.nan
    checked: int = 0
    mismatched: int = 0
    mismatch_examples: list[dict[str, Any]] = field(default_factory=list)
    members_expected: int = 0
    members_db: int = -1
    protocol_errors: int = 0
    lag_changes: int = 0
    lag_matched: int = 0
    lag_unmatched: int = 0
    lag_p50_ms: float = math.nan
    lag_p99_ms: float = math.nan
    lag_max_ms: float = math.nan
    lag_all_p50_ms: float = math.nan
    lag_all_p99_ms: float = math.nan
    #: A few (watcher, id) whose receipts differed from the commits: ops wanted and got.
    lag_examples: list[dict[str, Any]] = field(default_factory=list)
    # -- the crash
    crash_sessions: int = 0
    crash_held: int = 0
    crash_converged: bool = False
    #: From the SIGKILL until the surviving watchers' views last changed (and equal the
    #: sessions still connected), and until the database held only those.
    crash_views_s: float = math.nan
    crash_db_s: float = math.nan
    relays_alive: list[bool] = field(default_factory=list)

    @property
    def changes(self) -> int:
        """Joins plus leaves: each one membership change, one transaction."""
        return self.joins + self.leaves

    @property
    def join_rate(self) -> float:
        return self.joins / self.churn_s if self.churn_s > 0 else math.nan

    @property
    def leave_rate(self) -> float:
        return self.leaves / self.churn_s if self.churn_s > 0 else math.nan

    @property
    def rows_per_change(self) -> float:
        """Rows written per join or leave, in every table but the lease's (whose
        renewals every few seconds are the relays' own chore, not the churn's)."""
        rows = dbwrites.total(self.writes, skip=[LEASE_TABLE])
        return rows / self.changes if self.changes else math.nan

    @property
    def complete(self) -> bool:
        """Every session started, every join left, nothing was lost, the views converged
        to the database, which held exactly the sessions still subscribed; after a crash
        likewise; the relays not killed lived."""
        return (
            self.failed == 0
            and self.joins > 0
            and self.failed_joins == 0
            and self.lost_churners == 0
            and not self.churn_timed_out
            and self.joins == self.leaves
            and self.converged
            and self.protocol_errors == 0
            and self.members_db == self.members_expected
            and (self.crash_sessions == 0 or self.crash_converged)
            and self.relay_alive
        )

    def summary(self) -> dict[str, float]:
        """The figures the tables take medians of."""
        return {
            "join_rate": self.join_rate,
            "leave_rate": self.leave_rate,
            "rows_per_change": self.rows_per_change,
            "changelog_per_change": self.changelog_rows / self.changes
            if self.changes
            else math.nan,
            "notifies_per_change": self.notifies / self.changes if self.changes else math.nan,
            "relay_cpu_per_change_ms": self.relay_cpu_s * 1000 / self.changes
            if self.changes
            else math.nan,
            "converge_ms": self.converge_ms,
            "lag_p50_ms": self.lag_p50_ms,
            "lag_p99_ms": self.lag_p99_ms,
            "lag_all_p50_ms": self.lag_all_p50_ms,
            "lag_all_p99_ms": self.lag_all_p99_ms,
            "join_p50_ms": self.join_p50_ms,
            "join_p99_ms": self.join_p99_ms,
            "leave_p50_ms": self.leave_p50_ms,
            "leave_p99_ms": self.leave_p99_ms,
            "crash_views_s": self.crash_views_s,
            "crash_db_s": self.crash_db_s,
            **self.cpu_shares(),
        }


def presence_changes(rows: Iterable[tuple[Any, float]], topic: str) -> dict[str, list[float]]:
    """Per member id of ``topic``: its inserts (1) and deletes (-1) with their commit
    times, in commit order, flattened as ``[op, ms, op, ms...]`` (what
    ``presencegen.js``'s ``lag`` takes). ``rows``: changelog rows in commit order, each
    (its changes, its commit time). An id belongs to ``topic`` when one of its inserts
    says so (a member id is a digest of its topic); updates are not membership changes."""
    by_id: dict[str, list[float]] = {}
    on_topic: set[str] = set()
    for changes, ms in rows:
        for change in parse_changes(changes):
            if change.op not in ("i", "d"):
                continue
            key = str(change.pk)
            if change.op == "i" and change.values.get("topic") == topic:
                on_topic.add(key)
            by_id.setdefault(key, []).extend((1.0 if change.op == "i" else -1.0, ms))
    return {key: ops for key, ops in by_id.items() if key in on_topic}


def _fetch(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url, application_name="ddp-bench presence")
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            rows: list[tuple[Any, ...]] = cur.fetchall()
    finally:
        conn.close()
    return rows


def members(url: str, topic: str) -> list[str]:
    """The ids of the members of ``topic`` the database holds now."""
    rows = _fetch(url, "SELECT id FROM ddp_presence WHERE topic = %s", (topic,))
    return [str(r[0]) for r in rows]


def _reset(url: str) -> int:
    """Delete what an earlier run left of presence (a relay that did not stop in time
    releases nothing); only while no relay runs. Returns the members it removed."""
    conn = psycopg2.connect(url, application_name="ddp-bench presence")
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM ddp_presence_hold")
            cur.execute("DELETE FROM ddp_presence_lease")
            cur.execute("DELETE FROM ddp_presence")
            removed = int(cur.rowcount)
        conn.commit()
    finally:
        conn.close()
    return removed


def _books(url: str, count: int) -> list[str]:
    rows = _fetch(url, "SELECT id FROM bookstore_book ORDER BY id LIMIT %s", (count,))
    ids = [str(r[0]) for r in rows]
    if len(ids) < count:
        raise BenchError(f"--topics {count}: the database has only {len(ids)} books")
    return ids


def _topic_and_channel(url: str) -> tuple[str, str]:
    """The watchers' topic (the only one anyone is present on before the churn) and the
    channel that carries the presence rows (found in the changelog, not from a name)."""
    topics = [str(r[0]) for r in _fetch(url, "SELECT DISTINCT topic FROM ddp_presence", ())]
    if len(topics) != 1:
        raise BenchError(f"expected the watchers on one presence topic, found {topics}")
    found = _fetch(
        url,
        "SELECT channel FROM ddp_changelog WHERE changes @> %s::jsonb ORDER BY id DESC LIMIT 1",
        (json.dumps([{"f": {"topic": topics[0]}}]),),
    )
    if not found:
        raise BenchError("no changelog row carries the presence rows: is ddp_presence published?")
    return topics[0], str(found[0][0])


def _converge(
    gen: NodeProcess, url: str, topic: str, timeout: float, *, since_ms: float | None
) -> tuple[bool, dict[str, Any], int]:
    """Poll until every live watcher's view equals the database's members of ``topic``
    and the database holds exactly the members the generator has on open sockets, or
    ``timeout``; returns (converged, the last ``verified``, the database's count)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = members(url, topic)
        gen.command({"cmd": "verify", "expected": ids})
        verified = gen.wait_for("verified", 60)
        done = int(verified["mismatched"]) == 0 and len(ids) == int(verified["members"])
        if since_ms is not None and done:
            done = float(verified["lastChange"]) >= since_ms
        if done or time.monotonic() > deadline:
            return done, verified, len(ids)
        time.sleep(POLL_SECONDS)


def run_presence(
    db: Database,
    workdir: Path,
    cleanup: Cleanup,
    *,
    relays: int,
    watchers: int,
    pool: int,
    rate: float,
    seconds: float,
    hold: float,
    topics: int,
    lease: float,
    crash_sessions: int,
    converge_timeout: float,
    deflate: bool,
    concurrency: int,
    ramp_timeout: float,
    settle: float,
    workers: int = 1,
    live: bool = True,
    label: str = "",
    quiet: bool = False,
) -> PresenceRun:
    say = figures.sayer(label, quiet)
    result = PresenceRun(
        tree="after", revision=None, sessions=watchers * relays + pool, workers=workers,
        relays=relays, watchers=watchers, pool=pool, rate=rate, seconds=seconds,
        hold_s=hold, topics=topics, lease_s=lease, crash_sessions=crash_sessions,
    )  # fmt: skip
    stack: list[Relay] = []
    gen: NodeProcess | None = None
    log = None
    counter: dbwrites.NotifyCounter | None = None
    try:
        leftover = _reset(db.url)
        if leftover:
            say(f"removed {leftover} members an earlier run left behind")
        env = {"DDP_PRESENCE_LEASE": f"{lease:g}"}
        for _ in range(relays):
            relay = Relay(
                db.url, workdir, cleanup, max_sessions=result.sessions, workers=workers, env=env
            )
            stack.append(relay)
        pids = [pid for relay in stack for pid in relay.worker_pids]
        result.worker_pids = pids
        checks = [f"{live_check(r) * 1000:.0f}" for r in stack] if live else []
        say(
            f"{relays} relays on :{', :'.join(str(r.port) for r in stack)} (lease {lease:g} s)"
            + (f"; live updates in {' / '.join(checks)} ms" if checks else "")
        )
        books = _books(db.url, topics)
        log = open(workdir / f"presencegen-{stack[0].port}.log", "w")  # noqa: SIM115
        started = time.monotonic()
        gen = NodeProcess(
            SCRIPT,
            {
                "urls": [r.ws_url for r in stack], "watchers": watchers, "pool": pool,
                "rate": rate, "seconds": seconds, "holdMs": round(hold * 1000),
                "watchBook": books[0], "books": books, "concurrency": concurrency,
                "deflate": deflate, "rampTimeoutMs": int(ramp_timeout * 1000),
                "churnTimeoutMs": int((seconds + hold + converge_timeout) * 1000),
            },
            ramp_timeout=ramp_timeout,
            log=log,
        )  # fmt: skip
        cleanup.push("presence generator", gen.close)
        ramped = gen.ramp()
        result.ramp_s = time.monotonic() - started
        result.ready = int(ramped["ready"])
        result.failed = result.sessions - result.ready
        say(
            f"{result.ready}/{result.sessions} sessions ({watchers * relays} watchers) in "
            f"{result.ramp_s:.1f} s"
            + (f" ({result.failed} failed: {ramped['errors']})" if result.failed else "")
        )
        if result.failed:
            raise BenchError(f"{result.failed} sessions failed to start: {ramped['errors']}")
        result.topic, result.channel = _topic_and_channel(db.url)
        ok, verified, count = _converge(gen, db.url, result.topic, 60, since_ms=None)
        if not ok:
            raise BenchError(
                f"the watchers did not see each other within 60 s: the database has {count} "
                f"members, {verified['members']} sessions are subscribed, "
                f"{verified['mismatched']}/{verified['checked']} views differ, e.g. "
                f"{verified['examples'][:1]}"
            )
        time.sleep(settle)
        # Every write so far reported (the watchers' joins, the live checks): the churn's
        # are then the difference.
        before, settled = dbwrites.settled_counters(db.url, TABLES, ignore=[LEASE_TABLE])
        position = dbwrites.changelog_position(db.url)
        counter = dbwrites.NotifyCounter(db.url, result.channel)
        gen.command({"cmd": "mark"})
        gen.wait_for("marked", 30)
        meter = CpuMeter(pids, [gen.pid], db)
        gen.command({"cmd": "go"})
        last_note = [time.monotonic()]

        def progress(event: dict[str, Any]) -> None:
            if event.get("event") == "churning" and time.monotonic() - last_note[0] >= 5:
                last_note[0] = time.monotonic()
                say(
                    f"  churn: {event['joins']} joins, {event['leaves']} leaves, "
                    f"{event['active']} present, {event['starved']} starved"
                )

        churned = gen.wait_for("churned", seconds + hold + converge_timeout + 60, progress)
        figures.take_usage(result, meter.stop())
        take_churn(result, churned)
        say(
            f"churn: {result.joins} joins and {result.leaves} leaves in {result.churn_s:.1f} s "
            f"({result.join_rate:.0f} joins/s, {result.leave_rate:.0f} leaves/s asked "
            f"{rate:g}); {result.starved} joins skipped (no idle session), "
            f"{result.failed_joins} failed; join p50 {result.join_p50_ms:.0f} / p99 "
            f"{result.join_p99_ms:.0f} ms, leave p50 {result.leave_p50_ms:.0f} / p99 "
            f"{result.leave_p99_ms:.0f} ms"
        )
        # The watched topic's last leave: its removal is the last change the views await.
        last_unsub = churned["lastUnsubWatched"]
        ok, verified, count = _converge(
            gen, db.url, result.topic, converge_timeout,
            since_ms=float(last_unsub) if last_unsub is not None else None,
        )  # fmt: skip
        take_convergence(result, ok, verified, count, last_unsub)
        say(
            f"converged: {'yes' if ok else 'NO'}, "
            f"{figures.ms_text(result.converge_ms)} after the last unsub; views equal to the "
            f"database {result.checked - result.mismatched}/{result.checked}; members "
            f"{result.members_db} (expected {result.members_expected})"
        )
        after, result.writes_settled = dbwrites.settled_counters(
            db.url, TABLES, ignore=[LEASE_TABLE]
        )
        result.writes_settled = result.writes_settled and settled
        result.notifies = counter.stop()
        counter = None
        result.writes = dbwrites.deltas(before, after)
        rows = dbwrites.changelog_rows(db.url, result.channel, position)
        result.changelog_rows = len(rows)
        gen.command({"cmd": "lag", "changes": presence_changes(rows, result.topic)})
        take_lag(result, gen.wait_for("lag", 120))
        s = result.summary()
        say(
            f"database: {s['rows_per_change']:.2f} rows written per join or leave "
            f"(settled: {result.writes_settled}), {s['changelog_per_change']:.2f} changelog "
            f"rows and {s['notifies_per_change']:.2f} NOTIFYs; relay CPU "
            f"{s['relay_cpu_per_change_ms']:.2f} ms per change; lag to a watcher p50 "
            f"{result.lag_p50_ms:.0f} / p99 {result.lag_p99_ms:.0f} ms "
            f"({result.lag_matched} matched, {result.lag_unmatched} unmatched)"
        )
        if crash_sessions:
            _crash(result, gen, stack, db.url, crash_sessions, converge_timeout, say)
        result.relays_alive = [r.alive() for r in stack]
        survivors = stack[1:] if crash_sessions else stack
        result.relay_alive = all(r.alive() for r in survivors)
        result.relay_errors = sum(r.error_count() for r in stack)
        result.worker_timeouts = sum(r.timeout_count() for r in stack)
        warning = figures.noise_warning(result, "during the churn: figures are skewed")
        if warning:
            say(warning)
        return result
    finally:
        if counter is not None:
            counter.stop()
        if gen is not None:
            gen.close()
        for relay in stack:
            relay.stop()
        if log is not None:
            log.close()


def take_churn(result: PresenceRun, churned: dict[str, Any]) -> None:
    """The figures of the generator's ``churned`` event (a missing time stays NaN)."""
    result.started = int(churned["started"])
    result.joins = int(churned["joins"])
    result.leaves = int(churned["leaves"])
    result.failed_joins = int(churned["failedJoins"])
    result.starved = int(churned["starved"])
    result.lost_churners = int(churned["lostChurners"])
    result.churn_timed_out = bool(churned["timedOut"])
    result.generator_errors = dict(churned.get("errors") or {})
    first = churned["churnStart"]
    ends = [float(t) for t in (churned["scheduleEnd"], churned["lastNosub"]) if t is not None]
    known = first is not None and ends
    result.churn_s = (max(ends) - float(first)) / 1000 if known else math.nan
    for kind in ("join", "leave"):
        for q in ("p50", "p99"):
            value = churned[kind][q]
            setattr(result, f"{kind}_{q}_ms", float(value) if value is not None else math.nan)


def take_convergence(
    result: PresenceRun, ok: bool, verified: dict[str, Any], count: int, last_unsub: Any
) -> None:
    """The last ``verified`` event of the wait for convergence (``ok``: it converged),
    the database's member ``count`` then, and the watched topic's last ``unsub`` (epoch
    ms; None: no churn session left it, so no convergence time)."""
    result.converged = ok
    result.checked = int(verified["checked"])
    result.mismatched = int(verified["mismatched"])
    result.mismatch_examples = list(verified["examples"])
    result.members_expected = int(verified["members"])
    result.members_db = count
    result.protocol_errors = int(verified["badAdded"]) + int(verified["badRemoved"])
    if ok and last_unsub is not None:
        result.converge_ms = max(0.0, float(verified["lastChange"]) - float(last_unsub))


def take_lag(result: PresenceRun, lag: dict[str, Any]) -> None:
    """The figures of the generator's ``lag`` event (an empty distribution: NaN)."""
    result.lag_changes = int(lag["changes"])
    result.lag_matched = int(lag["matched"])
    result.lag_unmatched = int(lag["unmatched"])
    result.lag_examples = list(lag.get("examples") or [])

    def ms(value: Any) -> float:
        return float(value) if value is not None else math.nan

    result.lag_p50_ms = ms(lag["delivery"]["p50"])
    result.lag_p99_ms = ms(lag["delivery"]["p99"])
    result.lag_max_ms = ms(lag["delivery"]["max"])
    result.lag_all_p50_ms = ms(lag["reachedAll"]["p50"])
    result.lag_all_p99_ms = ms(lag["reachedAll"]["p99"])


def _crash(
    result: PresenceRun,
    gen: NodeProcess,
    stack: list[Relay],
    url: str,
    count: int,
    timeout: float,
    say: Any,
) -> None:
    """``count`` sessions of the first relay join and stay; every watcher sees them; the
    first relay is SIGKILLed; how long until the survivors' views and the database hold
    only the members still connected."""
    gen.command({"cmd": "hold", "relay": 0, "count": count})
    result.crash_held = int(gen.wait_for("held", 120)["count"])
    ok, verified, count = _converge(gen, url, result.topic, 60, since_ms=None)
    if not ok:
        say(
            f"crash: not run: its {result.crash_held} members did not reach every watcher in "
            f"60 s (database {count}, expected {verified['members']})"
        )
        return
    killed_at = time.time()
    stack[0].kill()
    bound = 3 * result.lease_s + timeout
    db_at = math.nan
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        # The generator must have seen the dead relay's sockets close first: until then it
        # still counts their members as present.
        gen.command({"cmd": "verify", "expected": []})
        if int(gen.wait_for("verified", 60)["open"][0]) == 0:
            break
        time.sleep(0.05)
    while time.monotonic() < deadline:
        ids = members(url, result.topic)
        gen.command({"cmd": "verify", "expected": ids})
        verified = gen.wait_for("verified", 60)
        if math.isnan(db_at) and len(ids) == int(verified["members"]):
            db_at = time.time()
        if (
            int(verified["mismatched"]) == 0
            and len(ids) == int(verified["members"])
            and float(verified["lastChange"]) >= killed_at * 1000
        ):
            result.crash_converged = True
            result.crash_views_s = float(verified["lastChange"]) / 1000 - killed_at
            result.crash_db_s = db_at - killed_at
            break
        time.sleep(POLL_SECONDS)
    say(
        f"crash: {result.crash_held} members on the killed relay; the surviving watchers "
        f"converged {result.crash_views_s:.1f} s after the SIGKILL, the database "
        f"{result.crash_db_s:.1f} s (lease {result.lease_s:g} s)"
        if result.crash_converged
        else f"crash: NOT converged within {bound:.0f} s of the SIGKILL"
    )
