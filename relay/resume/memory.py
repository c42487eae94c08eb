"""The in-memory park store: the twin of ``relay.resume.store.PostgresParkStore``.

Job: the resumer's unit tests (and any run that wants resuming without a database). It
passes the same contract suite as the PostgreSQL store
(``tests/relay/resume/test_store_contract.py``): states go through the same packed form
(``relay.resume.parked``), so what loads is exactly what the database would give back;
expiry is strict the same way (loadable while ``expires_at > now``, deleted by
``delete_expired`` once ``expires_at < now``). ``simulate_unavailable`` makes every call
but ``close`` raise ``ParkStoreError``, as a database that is down does.

Thread- and greenlet-safe: one lock, held only for dict work.

Must not: do I/O, sleep, or pretend to be shared between processes (it lives in this one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from relay.resume import parked
from relay.resume.parked import ParkedSession
from relay.resume.store import ParkStoreError

__all__ = ["MemoryParkStore"]


class MemoryParkStore:
    """``ParkedStore`` in a dict; ``clock`` gives the time expiry is judged by."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: session id -> (packed state, expires_at by ``clock``, owner)
        self._rows: dict[str, tuple[bytes, float, str]] = {}
        self._unavailable = False

    def simulate_unavailable(self, unavailable: bool = True) -> None:
        """Test hook: behave like a database that cannot be reached (or is back)."""
        self._unavailable = unavailable

    def session_ids(self) -> set[str]:
        """Every id with a row, expired or not (what the table holds). For tests."""
        with self._lock:
            return set(self._rows)

    def _check(self) -> None:
        if self._unavailable:
            raise ParkStoreError("park store unavailable (simulated)")

    def save(
        self, state: ParkedSession, window: float, *, owner: str = "", owner_limit: int = 0
    ) -> bool:
        self._check()
        # Encoded before taking the lock, and failing the same way the database store
        # does for a state that cannot be written.
        data = parked.pack(state)
        with self._lock:
            now = self._clock()
            if owner_limit:
                held = sum(
                    len(d)
                    for sid, (d, expires_at, o) in self._rows.items()
                    if o == owner and expires_at > now and sid != state.session_id
                )
                if held + len(data) > owner_limit:
                    return False
            self._rows[state.session_id] = (data, now + window, owner)
        return True

    def load(self, session_id: str) -> ParkedSession | None:
        self._check()
        with self._lock:
            row = self._rows.get(session_id)
            now = self._clock()
        if row is None or not row[1] > now:
            return None
        return parked.unpack(row[0])

    def delete(self, session_id: str) -> None:
        self._check()
        with self._lock:
            self._rows.pop(session_id, None)

    def delete_expired(self) -> None:
        self._check()
        with self._lock:
            now = self._clock()
            for session_id in [
                s for s, (_, expires_at, _o) in self._rows.items() if expires_at < now
            ]:
                del self._rows[session_id]

    def close(self) -> None:
        # Nothing to release; the rows stay, as a database's do.
        pass
