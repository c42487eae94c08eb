"""relay.server.worker: password hashing runs off the event loop; the loaded heap is frozen."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from relay.server.worker import patch_pbkdf2


@pytest.fixture
def offloaded() -> object:
    original = hashlib.pbkdf2_hmac
    patch_pbkdf2()
    patch_pbkdf2()  # idempotent
    yield hashlib.pbkdf2_hmac
    hashlib.pbkdf2_hmac = original


def test_pbkdf2_gives_the_same_bytes_and_other_greenlets_run_meanwhile(offloaded: object) -> None:
    ticks: list[float] = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    beat = gevent.spawn(ticker)
    gevent.sleep(0.02)
    started = time.monotonic()
    key = hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 400_000)
    took = time.monotonic() - started
    beat.kill()
    import _hashlib  # the C implementation the patch wraps

    assert key == _hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 400_000)
    during = [t for t in ticks if started <= t <= started + took]
    assert took > 0.05 and len(during) >= 3  # the loop kept turning while it hashed


def test_freezing_the_heap_hides_what_is_loaded_from_the_collector() -> None:
    # In a process of its own: a frozen heap stays frozen (the test process must not).
    script = textwrap.dedent(
        """
        import gc, json
        import django.db.models, relay.protocol.mergebox  # a loaded application, in small
        from relay.server.worker import freeze_heap
        before = len(gc.get_objects())
        freeze_heap()
        after = len(gc.get_objects())
        garbage = []
        garbage.append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        print(json.dumps([before, after, gc.get_freeze_count(), gc.collect()]))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after, frozen, collected = json.loads(out.stdout)
    assert frozen >= before * 0.9 and after < before * 0.05
    assert collected >= 1
