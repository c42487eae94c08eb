"""Session resumption across relays: the parked-state format, where it is kept, and the
resumer that parks a session and takes it back on reconnect (DESIGN.md 5).

``parked`` (pure: the state of a parked session and its JSON form), ``store`` (where
parked states are kept: PostgreSQL, and an in-memory twin), ``resumer`` (the decisions,
on top of the coordinator).

Must not: touch sockets or DDP framing (the session does), or write per message.
"""
