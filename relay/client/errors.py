"""The exception a caller of the DDP client sees when the server answers with an error.

Kept apart from the connection so that it can be imported (and caught) without the
optional ``websocket-client`` dependency.

Must not: import websocket, threading or anything of the project.
"""

from __future__ import annotations

from typing import Any


class DDPClientError(Exception):
    """A method or subscription answered with a Meteor error object."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('error')}: {error.get('reason')}")
        self.error = error.get("error")
        self.reason = error.get("reason")
        self.details = error.get("details")
