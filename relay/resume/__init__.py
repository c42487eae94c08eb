"""Session resumption across relays: the parked-state format, where it is kept, and the
resumer that parks a session and takes it back on reconnect (DESIGN.md 5).

- ``parked``: what a parked session is (``ParkedSession``) and its JSON text; pure.
- ``store``: where parked states are kept. The ``ParkedStore`` seam and its error
  (``ParkStoreError``), and the PostgreSQL implementation ``PostgresParkStore`` (also
  named ``ParkStore``) on the ``ddp_parked_session`` table.
- ``memory``: ``MemoryParkStore``, the in-memory twin of the PostgreSQL store; both pass
  one contract suite (``tests/relay/resume/test_store_contract.py``).
- ``resumer``: ``Resumer``, the decisions (register, park, resume, drop, housekeeping) on
  top of the coordinator (``coordinator/``) and a ``ParkedStore``; ``build_coordinator``
  picks the coordinator the settings ask for.

Must not: touch sockets or DDP framing (the session does), or write per message.
"""
