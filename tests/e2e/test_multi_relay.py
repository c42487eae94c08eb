"""Live updates across a cluster: three real relays, 60 mixed clients, thousands of commits.

The setting (issue #3): PostgreSQL, concurrent writer processes (``tests/e2e/writer.py``,
plain Django ORM, no DDP) and three relay processes (real gunicorn gevent workers, 2, 1
and 2 workers) on loopback. Sixty clients are spread round-robin over the relays:

* 40 ``relay.client.DDPClient`` (20 raw WebSocket, 20 SockJS);
* 20 node clients in watch mode (``node/watch.js``): npm ``ddp`` (raw and SockJS raw),
  ``simpleddp``, ``ddp.js`` and the real Meteor 1.3 client under jsdom;

each subscribed to ``books.all`` or to ``books.byAuthorEmail`` for one of the three seeded
authors. The writers then commit a few thousand random creates, renames, moves between
authors, edits and removes, in single and multi-row transactions, some rolled back (whole
transactions and savepoints). A few more DDPClients subscribe while the writes run.

At the end, once every client has been quiet for 2 s, each client's cache must equal the
database restricted to its subscription (every published field, by wire name), and no
client may have seen a duplicate ``added``, a ``changed``/``removed`` for a document it
did not have, a title revision (writer.py's ``"<label> r<N>"``) or ``updatedAt`` going
backwards for one document, a reconnect, or an error.

``test_write_fence`` checks invariant I5: ``updated`` for a method goes out only after
the data messages its writes caused were sent to that session: ``books.slowRename(id,
title, 500)`` while a writer renames other books, then a few hundred create / rename /
setAuthor / remove calls, each checked on the client's received message order.

On failure the message names each client's problems and quotes the relays' warnings and
errors; the full relay logs and a JSON report stay in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.launch import example_env
from tests.e2e.convergence import (
    ALL,
    AUTHOR_IDS,
    AUTHORS,
    BOOKS,
    EMAILS,
    Sub,
    WireClient,
    by_email,
    cache_problems,
    database_state,
    expected_view,
    order_problems,
)
from tests.e2e.node_runs import start_watch
from tests.fixtures.relays import RelayProcess, RelayStack, RelayStacks

pytestmark = [pytest.mark.e2e, pytest.mark.node, pytest.mark.timeout(280)]

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.py"

#: Workers per relay process.
RELAY_WORKERS = (2, 1, 2)
#: Writer processes and operations each (the total is a few thousand).
WRITERS = 2
OPS_PER_WRITER = 1250
#: A client is settled once no data message arrived for this long.
QUIET_SECONDS = 2.0
#: Upper bounds of the phases (the whole test stays well under 3 minutes).
SUBSCRIBE_TIMEOUT = 60.0
WRITE_TIMEOUT = 90.0
DRAIN_TIMEOUT = 30.0

#: Node client kinds in watch mode: (library, transport) -> how many.
NODE_KINDS: dict[tuple[str, str], int] = {
    ("ddp", "raw"): 4,
    ("ddp", "sockjs-raw"): 2,
    ("simpleddp", "raw"): 5,
    ("ddpjs", "raw"): 5,
    ("meteor", "sockjs"): 4,
}
PY_KINDS: dict[tuple[str, str], int] = {("python", "raw"): 20, ("python", "sockjs"): 20}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(node_toolchain: Path, module_relay_stack: RelayStacks) -> RelayStack:
    """A dedicated database (migrated, seeded) and three relays of 2, 1 and 2 workers."""
    return module_relay_stack(workers=RELAY_WORKERS)


# -- the clients ---------------------------------------------------------------------------


@dataclass
class Watcher:
    """One client of the test, Python or node, and what it reported."""

    name: str
    library: str
    transport: str
    relay: int
    sub: Sub
    late: bool = False
    client: WireClient | None = None
    proc: subprocess.Popen[str] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    stderr: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return f"{self.library}/{self.transport}"

    # Python ------------------------------------------------------------------------------

    def start_python(self, relay: RelayProcess) -> None:
        sockjs = self.transport == "sockjs"
        self.client = WireClient(relay.url if sockjs else relay.ws_url, sockjs=sockjs, timeout=30)
        self.client.connect()
        self.client.subscribe(self.sub.name, *self.sub.params)
        self.ready.set()

    # node ----------------------------------------------------------------------------------

    def start_node(self, relay: RelayProcess) -> None:
        env = {
            "WATCH_QUIET_MS": str(int(QUIET_SECONDS * 1000)),
            "WATCH_DRAIN_MS": str(int(DRAIN_TIMEOUT * 1000)),
            "WATCH_TIMEOUT_MS": "240000",
        }
        self.proc = start_watch(
            self.library, relay.url, self.transport, self.sub.name, self.sub.params, env
        )
        self.readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for thread in self.readers:
            thread.start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout.append(line)

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            if line.startswith("watch: ready"):
                self.ready.set()
        self.ready.set()  # exited: the report will say why

    def stop_node(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def close_pipes(self) -> None:
        if self.proc is None:
            return
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def collect_node(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for thread in self.readers:
            thread.join(timeout=5)
        self.close_pipes()
        out = "".join(self.stdout)
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            self.report = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            self.report = {
                "ok": False,
                "stage": "no report",
                "error": f"exit {self.proc.returncode}; stdout {out[-2000:]!r}",
            }
        self.report["exit"] = self.proc.returncode
        self.report["stderrTail"] = self.stderr[-10:]

    def collect_python(self) -> None:
        assert self.client is not None
        received, cache = self.client.snapshot()
        counts = Counter(str(m.get("msg")) for m in received)
        self.report = {
            "ok": True,
            "session": self.client.session,
            "cache": cache,
            "violations": list(self.client.violations) + order_problems(received),
            "counts": dict(counts),
            "errors": list(self.client.errors),
            "closed": self.client.closed.is_set(),
            "reconnects": 0,
            "nosubs": dict(self.client.nosubs),
        }

    # checks ---------------------------------------------------------------------------------

    def problems(self, books: dict[str, Any], authors: dict[str, Any]) -> list[str]:
        rep = self.report
        if not rep.get("ok"):
            return [f"client failed at {rep.get('stage')!r}: {rep.get('error')}"]
        want = expected_view(self.sub, books, authors)
        out = cache_problems(rep["cache"], want)
        out += [f"violation: {json.dumps(v, default=str)[:400]}" for v in rep.get("violations", [])]
        if rep.get("violationsDropped"):
            out.append(f"{rep['violationsDropped']} more violations")
        if rep.get("errors"):
            out.append(f"DDP errors: {rep['errors'][:3]}")
        if rep.get("closed"):
            out.append("the connection closed during the run")
        if rep.get("reconnects"):
            out.append(f"{rep['reconnects']} reconnects (new sessions)")
        if rep.get("nosubs"):
            out.append(f"nosub: {rep['nosubs']}")
        if self.library != "python":
            library_want = {
                BOOKS: {
                    b: {"title": d["title"], "authorId": d["authorId"]}
                    for b, d in want[BOOKS].items()
                },
                AUTHORS: {
                    a: {"email": d["email"], "name": d["name"]} for a, d in want[AUTHORS].items()
                },
            }
            out += [
                f"library store: {p}"
                for p in cache_problems(rep.get("libraryCache") or {}, library_want)
            ]
            if rep.get("clientWarnings"):
                out.append(f"client warnings: {rep['clientWarnings'][:3]}")
            if rep.get("pageErrors") or rep.get("console"):
                out.append(
                    f"Meteor page errors/console: {rep.get('pageErrors')} {rep.get('console')}"
                )
            if rep.get("timings", {}).get("quiet") is False:
                out.append(f"never quiet for {QUIET_SECONDS}s within {DRAIN_TIMEOUT}s")
        return out


def plan_clients(relays: int) -> list[Watcher]:
    """60 clients: each kind spread over relays and over the four subscriptions."""
    subs = [ALL, by_email(EMAILS[0]), ALL, by_email(EMAILS[1]), ALL, by_email(EMAILS[2])]
    watchers = []
    kinds = {**PY_KINDS, **NODE_KINDS}
    for kind_index, ((library, transport), count) in enumerate(kinds.items()):
        for j in range(count):
            watchers.append(
                Watcher(
                    name=f"{library}-{transport}-{j}",
                    library=library,
                    transport=transport,
                    relay=(j + kind_index) % relays,
                    sub=subs[(j + kind_index) % len(subs)],
                )
            )
    return watchers


def start_writers(
    stack: RelayStack, seed: int, *extra: str, count: int = WRITERS
) -> list[subprocess.Popen[str]]:
    env = example_env(stack.database_url)
    return [
        subprocess.Popen(
            [sys.executable, str(WRITER), "--seed", str(seed), "--shard", f"{i}/{count}", *extra],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]


def finish_writers(procs: Sequence[subprocess.Popen[str]], timeout: float) -> list[dict[str, Any]]:
    summaries = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"writer did not finish within {timeout}s:\n{err[-3000:]}")
        lines = [line for line in out.splitlines() if line.strip()]
        assert proc.returncode == 0 and lines, (
            f"writer failed ({proc.returncode}):\n{out}\n{err[-4000:]}"
        )
        summary = json.loads(lines[-1])
        assert summary["ok"], summary
        summaries.append(summary)
    return summaries


def wait_quiet(clients: Sequence[WireClient], quiet: float, timeout: float) -> float:
    """Wait until no client got a data message for ``quiet`` seconds; the time it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        newest = max((c.last_data for c in clients), default=0.0)
        if time.monotonic() - newest >= quiet:
            break
        time.sleep(0.1)
    return time.monotonic() - started


# -- the tests -----------------------------------------------------------------------------


def test_sixty_clients_converge_over_three_relays(stack: RelayStack) -> None:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    watchers = plan_clients(len(stack.relays))
    assert len(watchers) == 60
    python = [w for w in watchers if w.library == "python"]
    node = [w for w in watchers if w.library != "python"]
    seed = int(os.environ.get("MULTI_RELAY_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"\nmulti-relay: writer seed {seed} (MULTI_RELAY_SEED={seed} to replay the writes)")

    failures: list[str] = []
    late: list[Watcher] = []
    everyone: list[Watcher] = list(watchers)
    try:
        # Subscribe everyone: node processes boot in parallel with the Python clients.
        for w in node:
            w.start_node(stack.relays[w.relay])
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: w.start_python(stack.relays[w.relay]), python))
        deadline = time.monotonic() + SUBSCRIBE_TIMEOUT
        for w in node:
            w.ready.wait(max(0.0, deadline - time.monotonic()))
        not_ready = [
            w.name for w in node if not (w.proc and w.proc.poll() is None and w.ready.is_set())
        ]
        assert not not_ready, f"node clients not subscribed: {not_ready}\n" + "\n".join(
            f"{w.name}: {w.stderr[-5:]}" for w in node if w.name in not_ready
        )
        timings["subscribe"] = time.monotonic() - t0

        # The writes, from concurrent writer processes; late subscribers join meanwhile.
        t_write = time.monotonic()
        writers = start_writers(stack, seed, "--ops", str(OPS_PER_WRITER), "--max-seconds", "80")
        for index in range(6):
            time.sleep(0.5)
            w = Watcher(
                name=f"late-{index}",
                library="python",
                transport="raw" if index % 2 == 0 else "sockjs",
                relay=index % len(stack.relays),
                sub=ALL if index < 3 else by_email(EMAILS[index % 3]),
                late=True,
            )
            w.start_python(stack.relays[w.relay])
            late.append(w)
        summaries = finish_writers(writers, WRITE_TIMEOUT)
        timings["write"] = time.monotonic() - t_write

        # Drain: node clients wait for their own quiet period once told to stop.
        t_drain = time.monotonic()
        for w in node:
            w.stop_node()
        py_clients = [w.client for w in python + late if w.client is not None]
        drained = wait_quiet(py_clients, QUIET_SECONDS, DRAIN_TIMEOUT)
        collectors = [
            threading.Thread(target=w.collect_node, args=(DRAIN_TIMEOUT + 15,)) for w in node
        ]
        for thread in collectors:
            thread.start()
        for thread in collectors:
            thread.join()
        timings["drain"] = time.monotonic() - t_drain
        timings["python_quiet_after"] = drained
        for w in python + late:
            w.collect_python()

        books, authors = database_state(stack.database_url)
        everyone = watchers + late
        for w in everyone:
            problems = w.problems(books, authors)
            if problems:
                failures.append(
                    f"{w.name} [{w.kind}, relay {w.relay}, {w.sub}, "
                    f"session {w.report.get('session')}]:\n    " + "\n    ".join(problems[:12])
                )
        # Late check: did wrong Python caches converge later after all (slow), or never?
        if failures:
            time.sleep(5)
            later = database_state(stack.database_url)
            for w in python + late:
                assert w.client is not None
                _, cache = w.client.snapshot()
                still = cache_problems(cache, expected_view(w.sub, *later))
                if w.problems(books, authors) and not still:
                    failures.append(f"{w.name}: converged only >5 s after the quiet period")
        timings["total"] = time.monotonic() - t0
        summary = run_summary(everyone, summaries, books, timings)
        print(summary)
        (stack.log_dir / "multi_relay_report.json").write_text(
            json.dumps(
                {
                    "seed": seed,
                    "writers": summaries,
                    "timings": timings,
                    "clients": {
                        w.name: {k: v for k, v in w.report.items() if k != "cache"}
                        for w in everyone
                    },
                },
                default=str,
            )
        )
    finally:
        for w in node:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(timeout=10)
            w.close_pipes()
        for w in watchers + late:
            if w.client is not None:
                w.client.close()

    assert not failures, (
        f"{len(failures)} of {len(everyone)} clients do not match the database "
        f"(writer seed {seed}):\n"
        + "\n".join(failures[:20])
        + f"\n\nrelay evidence:\n{stack.evidence()}\n\nmetrics:\n{stack.metrics()}"
        + f"\n\nlogs and report: {stack.log_dir}"
    )
    assert timings["total"] < 180, f"the run took {timings['total']:.0f}s (limit 180 s)"


def run_summary(
    watchers: Sequence[Watcher],
    writers: Sequence[dict[str, Any]],
    books: dict[str, Any],
    timings: dict[str, float],
) -> str:
    per_kind: dict[str, list[int]] = {}
    for w in watchers:
        counts = w.report.get("counts") or {}
        data = sum(counts.get(k, 0) for k in ("added", "changed", "removed"))
        per_kind.setdefault(w.kind + (" (late)" if w.late else ""), []).append(data)
    committed: Counter[str] = Counter()
    rolled: Counter[str] = Counter()
    for s in writers:
        committed.update(s["committed"])
        rolled.update(s["rolledBack"])
    lines = [
        "multi-relay summary:",
        f"  writers: committed {dict(committed)}; rolled back {dict(rolled)}; "
        f"transactions {sum(s['transactions'] for s in writers)} "
        f"(multi {sum(s['multi'] for s in writers)}, rolled back "
        f"{sum(s['transactionsRolledBack'] for s in writers)}, savepoints rolled back "
        f"{sum(s['savepointsRolledBack'] for s in writers)}); "
        f"{max(s['seconds'] for s in writers):.1f}s",
        f"  database at the end: {len(books)} books",
        "  data messages per client kind (clients, total, min-max):",
    ]
    for kind, values in sorted(per_kind.items()):
        lines.append(f"    {kind:22} {len(values):3} {sum(values):8} {min(values)}-{max(values)}")
    lines.append("  timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    return "\n".join(lines)


# -- the write fence -----------------------------------------------------------------------


def call_traced(client: WireClient, method: str, *params: Any) -> tuple[str, Any]:
    """Call ``method`` (waits for result AND updated); its method id and result."""
    before = len(client.sent_methods)
    result = client.call(method, *params)
    ids = client.sent_methods[before:]
    assert len(ids) == 1, ids
    return ids[0], result


def check_before_updated(
    client: WireClient,
    method_id: str,
    what: str,
    predicate: Callable[[dict[str, Any]], bool] | None,
) -> str | None:
    """None if the data message ``predicate`` matches came before ``updated`` for the method
    (or, with ``predicate`` None, if updated arrived); else what went wrong."""
    received, _ = client.snapshot()
    updated_at = next(
        (
            i
            for i, m in enumerate(received)
            if m.get("msg") == "updated" and method_id in m.get("methods", ())
        ),
        None,
    )
    if updated_at is None:
        return f"{what}: no updated for method {method_id}"
    if predicate is None:
        return None
    data_at = next((i for i, m in enumerate(received) if predicate(m)), None)
    if data_at is None:
        return f"{what}: updated (#{updated_at}) came, its data message had not (checked at once)"
    if data_at > updated_at:
        msg = received[data_at]
        return f"{what}: updated (#{updated_at}) before its data message (#{data_at}): {msg}"
    return None


def is_msg(kind: str, doc_id: str | None = None, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A data message of ``kind`` on books (for ``doc_id``, if given) carrying ``fields``."""

    def test(m: dict[str, Any]) -> bool:
        if m.get("msg") != kind or m.get("collection") != BOOKS:
            return False
        if doc_id is not None and m.get("id") != doc_id:
            return False
        got = m.get("fields") or {}
        return all(got.get(k) == v for k, v in fields.items())

    return test


def test_write_fence(stack: RelayStack, tmp_path: Path) -> None:
    """I5: `updated` for a method only after the data messages its writes caused."""
    relays = stack.relays
    n = len(relays)
    # Two books.all clients per relay (raw and SockJS), one books.byAuthorEmail per relay.
    all_clients = [
        WireClient(relays[i % n].url if i >= n else relays[i % n].ws_url, sockjs=i >= n, timeout=30)
        for i in range(2 * n)
    ]
    email_clients = [
        (WireClient(relays[i].ws_url, timeout=30), EMAILS[i % len(EMAILS)]) for i in range(n)
    ]
    problems: list[str] = []
    writer: list[subprocess.Popen[str]] = []
    calls: Counter[str] = Counter()
    calls_lock = threading.Lock()
    stop_file = tmp_path / "stop-writer"
    t0 = time.monotonic()
    try:
        for c in all_clients:
            c.connect()
            c.subscribe("books.all")
        for c, email in email_clients:
            c.connect()
            c.subscribe("books.byAuthorEmail", email)

        # Targets the background writer leaves alone.
        targets = []
        for i, c in enumerate(all_clients):
            _, book_id = call_traced(
                c, "books.create", {"title": f"fence {i} r0", "authorId": "leguin", "price": "5.00"}
            )
            targets.append(book_id)
        excludes = [arg for t in targets for arg in ("--exclude", t)]
        writer = start_writers(
            stack,
            7,
            "--only",
            "rename",
            "--ops",
            "1000000",
            "--stop-file",
            str(stop_file),
            "--max-seconds",
            "60",
            "--label",
            "bg",
            *excludes,
            count=1,
        )
        # Wait until the writer's renames are flowing to the clients.
        probe = all_clients[0]
        seen = len(probe.snapshot()[0])
        probe.wait_for(
            lambda: sum(1 for m in probe.received[seen:] if m.get("msg") == "changed") >= 5, 20
        )

        def count(done: dict[str, int]) -> None:
            with calls_lock:
                calls.update(done)

        # 1) books.slowRename(id, title, 500) on every books.all client at once.
        def slow(i: int) -> str | None:
            c, book_id = all_clients[i], targets[i]
            title = f"fence {i} r1"
            method_id, _ = call_traced(c, "books.slowRename", book_id, title, 500)
            count({"books.slowRename": 1})
            return check_before_updated(
                c,
                method_id,
                f"slowRename {book_id} via client {i}",
                is_msg("changed", book_id, title=title),
            )

        with ThreadPoolExecutor(len(all_clients)) as pool:
            problems += [p for p in pool.map(slow, range(len(all_clients))) if p]

        # 2) A few hundred create / rename / setAuthor / remove calls, each checked.
        Expect = Callable[[dict[str, Any]], bool] | None

        def checked(c: WireClient, out: list[str], expect: Expect, method: str, *args: Any) -> Any:
            """Call, then check that the data message ``expect`` matches preceded updated."""
            method_id, result = call_traced(c, method, *args)
            problem = check_before_updated(c, method_id, f"{method}{args}", expect)
            if problem:
                out.append(problem)
            count({method: 1})
            return result

        def cycles_all(i: int) -> list[str]:
            c = all_clients[i]
            out: list[str] = []
            for k in range(10):
                t0, t1, t2 = (f"fence {i}.{k} r{rev}" for rev in range(3))
                doc = {"title": t0, "authorId": "pratchett", "price": "1.50"}
                book = checked(c, out, is_msg("added", title=t0), "books.create", doc)
                checked(c, out, is_msg("changed", book, title=t1), "books.rename", book, t1)
                checked(c, out, is_msg("changed", book, title=t2), "books.rename", book, t2)
                moved = is_msg("changed", book, authorId="jemisin")
                checked(c, out, moved, "books.setAuthor", book, "jemisin")
                checked(c, out, is_msg("removed", book), "books.remove", book)
            return out

        def cycles_email(i: int) -> list[str]:
            c, email = email_clients[i]
            mine = AUTHOR_IDS[email]
            other = next(a for a in AUTHOR_IDS.values() if a != mine)
            out: list[str] = []
            for k in range(8):
                t0, t1 = f"fence-e {i}.{k} r0", f"fence-e {i}.{k} r1"
                doc = {"title": t0, "authorId": other, "price": "2.00"}
                # Created under another author: nothing to see here, updated all the same.
                book = checked(c, out, None, "books.create", doc)
                checked(c, out, is_msg("added", book, title=t0), "books.setAuthor", book, mine)
                checked(c, out, is_msg("changed", book, title=t1), "books.rename", book, t1)
                checked(c, out, is_msg("removed", book), "books.setAuthor", book, other)
                checked(c, out, None, "books.remove", book)
            return out

        with ThreadPoolExecutor(len(all_clients) + len(email_clients)) as pool:
            futures = [pool.submit(cycles_all, i) for i in range(len(all_clients))]
            futures += [pool.submit(cycles_email, i) for i in range(len(email_clients))]
            for f in futures:
                problems += f.result()
        writer_still_running = writer[0].poll() is None
        stop_file.touch()
        summaries = finish_writers(writer, 40)

        clients = all_clients + [c for c, _ in email_clients]
        wait_quiet(clients, QUIET_SECONDS, DRAIN_TIMEOUT)
        for index, c in enumerate(clients):
            received, _ = c.snapshot()
            for v in c.violations + order_problems(received):
                problems.append(f"client {index}: {v}")
            if c.errors:
                problems.append(f"client {index}: DDP errors {c.errors[:3]}")
        elapsed = time.monotonic() - t0
        print(
            f"\nwrite fence: {sum(calls.values())} checked calls {dict(calls)} on {len(clients)} "
            f"clients while a writer committed {summaries[0]['committed']['rename']} renames "
            f"(still running during the calls: {writer_still_running}); {elapsed:.1f}s"
        )
    finally:
        for proc in writer:
            if proc.poll() is None:
                proc.kill()
        for c in all_clients + [c for c, _ in email_clients]:
            c.close()
    assert not problems, (
        f"{len(problems)} write-fence / order problems:\n"
        + "\n".join(problems[:30])
        + f"\n\nrelay evidence:\n{stack.evidence()}\n\nmetrics:\n{stack.metrics()}"
    )
    assert sum(calls.values()) >= 300
