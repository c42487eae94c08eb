"""``django_app.coroutines``: calling sync and async functions alike, and the greenlet
switch tracer that keeps asyncio's running loop per greenlet (checked against a model:
each greenlet sees the loop it set, whatever the order of switches)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

import greenlet  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_app import coroutines

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("test_coroutines", default="unset")


def test_a_sync_function_is_called_as_it_is() -> None:
    assert coroutines.call(lambda a, b: (a, b), 1, 2) == (1, 2)
    with pytest.raises(KeyError):
        coroutines.call({}.__getitem__, "x")
    assert greenlet.gettrace() is None  # nothing traced for plain calls


def test_an_async_function_is_awaited_with_the_callers_context() -> None:
    async def double(n: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        return 2 * n, VAR.get()

    token = VAR.set("caller")
    try:
        assert coroutines.call(double, 21) == (42, "caller")
    finally:
        VAR.reset(token)

    async def boom() -> None:
        raise LookupError("from the coroutine")

    with pytest.raises(LookupError, match="from the coroutine"):
        coroutines.call(boom)
    assert greenlet.gettrace() is None and asyncio._get_running_loop() is None


def test_an_awaitable_returned_by_a_plain_function_is_awaited() -> None:
    async def value() -> str:
        return "awaited"

    def plain() -> Coroutine[Any, Any, str]:
        return value()

    assert coroutines.call(plain) == "awaited"


def test_a_coroutine_that_cannot_run_is_closed_not_leaked() -> None:
    # Inside a running loop async_to_sync refuses: the coroutine never started, and must
    # not be reported "never awaited" (warnings are errors here).
    started: list[bool] = []

    async def never() -> None:
        started.append(True)

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match="event loop"):
            coroutines.call(lambda: never())

    asyncio.run(inside_a_loop())
    assert started == []


@settings(max_examples=200, deadline=None)
@given(
    owners=st.lists(st.sampled_from([None, 0, 1, 2, 3]), min_size=1, max_size=6),
    schedule=st.lists(st.integers(min_value=0, max_value=5), max_size=40),
)
def test_each_greenlet_sees_its_own_running_loop(
    owners: list[int | None], schedule: list[int]
) -> None:
    # Greenlet i "runs" loop owners[i] (None: no loop), as async_to_sync's loop thread and
    # the relay's other greenlets do; the driver switches among them in any order.
    made = [asyncio.new_event_loop() for _ in range(4)]
    driver = greenlet.getcurrent()
    seen: list[tuple[int, bool]] = []

    def body(index: int, own: asyncio.AbstractEventLoop | None) -> None:
        asyncio._set_running_loop(own)
        try:
            while True:
                seen.append((index, asyncio._get_running_loop() is own))
                driver.switch()
        finally:
            asyncio._set_running_loop(None)

    try:
        with coroutines._greenlet_local_loops():
            workers = [greenlet.greenlet(body) for _ in owners]
            for index, owner in enumerate(owners):
                workers[index].switch(index, None if owner is None else made[owner])
                assert asyncio._get_running_loop() is None  # the driver runs no loop
            for step in schedule:
                index = step % len(workers)
                workers[index].switch()
                assert asyncio._get_running_loop() is None
            for worker in workers:
                worker.throw(greenlet.GreenletExit)
                assert worker.dead
        assert greenlet.gettrace() is None
    finally:
        for loop in made:
            loop.close()
    assert all(ok for _, ok in seen), seen
    assert len(seen) == len(owners) + len(schedule)


def test_nested_blocks_share_one_tracer_and_chain_the_previous_one() -> None:
    events: list[str] = []

    def previous(event: str, args: Any) -> None:
        events.append(event)

    greenlet.settrace(previous)
    try:
        with coroutines._greenlet_local_loops():
            tracer = greenlet.gettrace()
            with coroutines._greenlet_local_loops():
                assert greenlet.gettrace() is tracer
            assert greenlet.gettrace() is tracer
            greenlet.greenlet(lambda: None).switch()
        assert greenlet.gettrace() is previous
        assert "switch" in events  # the tracer it replaced still saw the switches
    finally:
        greenlet.settrace(None)
