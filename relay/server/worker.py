"""The gunicorn worker class for relays: gunicorn's gevent worker, plus three duties.

Layer: composition. This is the only module that monkey-patches (through gunicorn's GeventWorker,
before the application is loaded) and it makes psycopg2 cooperative with
``psycogreen``, so ORM queries and the LISTEN connection yield to other greenlets instead
of blocking the worker. It also runs ``hashlib.pbkdf2_hmac`` (what Django's password
hashers, ours included, spend a login on: a quarter of a second of CPU) in a thread pool
of its own, one thread: it releases the GIL, so a login no longer stops every other session of the
worker for that long (the hostile-client probe measured 285 ms live updates under a
password-guessing client). On SIGTERM it drains the node first (readiness false, sessions
closed as "going away") and then lets gunicorn's graceful shutdown finish; SIGINT/SIGQUIT do
the same without waiting for the graceful timeout. Before serving, it freezes the loaded
heap (``freeze_heap``) so that the garbage collector's full passes stay short.

Run with ``gunicorn -k relay.server.worker.RelayWorker`` (``relay.server.gunicorn_conf`` sets it).
"""

from __future__ import annotations

import gc
import hashlib
from typing import Any

import gevent
import gevent.threadpool
from gunicorn.workers.ggevent import GeventWorker


class RelayWorker(GeventWorker):  # type: ignore[misc]
    """gunicorn's gevent worker with a cooperative psycopg2 and a DDP-aware drain."""

    def patch(self) -> None:
        super().patch()
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        patch_pbkdf2()

    def run(self) -> None:
        freeze_heap()
        super().run()
        # gunicorn waited for its request handlers, but DDP sockets outlive theirs
        # (``relay.transport.websocket.WebSocket.start``): let the drained sessions finish closing
        # and parking before the process exits.
        node = getattr(self.wsgi, "node", None)
        if node is not None:
            node.drain()  # idempotent; covers exits that did not come through a signal
            node.wait_sessions(self.cfg.graceful_timeout, self.notify)

    def handle_exit(self, sig: int, frame: Any) -> None:
        gevent.spawn(self._drain)
        super().handle_exit(sig, frame)

    def handle_quit(self, sig: int, frame: Any) -> None:
        # gunicorn's quick shutdown (SIGINT/SIGQUIT) would sys.exit() from a greenlet, which
        # gevent reports as a failure at interpreter exit. Close the sessions as "going
        # away" instead and leave the serving loop; the sockets are done within a second.
        gevent.spawn(self._quit)

    def _quit(self) -> None:
        self._drain()
        self.alive = False
        self.cfg.worker_int(self)

    def _drain(self) -> None:
        node = getattr(self.wsgi, "node", None)
        if node is not None:
            node.drain()


#: Password hashes a worker computes at once: one core's worth at most, whatever the
#: number of logins waiting (the others queue; the event loop keeps its own core).
HASHING_THREADS = 1


def freeze_heap() -> None:
    """Move everything the worker holds once its application is loaded (Django, the
    project, the relay's tables: tens of thousands of objects that live as long as the
    process) out of the garbage collector's sight, after one last collection of what
    loading left behind.

    A full collection traverses every tracked object and holds the event loop for all of
    it: under the hostile-client probe's fuzz, those pauses were 120 to 150 ms, every few
    seconds, and with the loaded heap frozen they are 30 to 35 ms. Nothing frozen is ever
    collected, so this runs once, after loading and before serving.
    """
    gc.collect()
    gc.freeze()


def patch_pbkdf2() -> None:
    """Make ``hashlib.pbkdf2_hmac`` run in a thread pool of its own (idempotent): the
    calling greenlet waits, the others run meanwhile, and at most ``HASHING_THREADS``
    hashes run at once."""
    original = hashlib.pbkdf2_hmac
    if getattr(original, "_relay_offloaded", False):
        return
    pools: list[Any] = []

    def pbkdf2_hmac(
        hash_name: str, password: Any, salt: Any, iterations: int, dklen: int | None = None
    ) -> bytes:
        if not pools:  # created in the worker process (after the fork), on first use
            pools.append(gevent.threadpool.ThreadPool(HASHING_THREADS))
        return bytes(pools[0].apply(original, (hash_name, password, salt, iterations, dklen)))

    pbkdf2_hmac._relay_offloaded = True  # type: ignore[attr-defined]
    hashlib.pbkdf2_hmac = pbkdf2_hmac
