"""A Python DDP client (raw WebSocket or SockJS) with Meteor's cache and reconnect rules.

Must not: import the relay runtime (sessions, gevent, Django).
"""

from relay.client.connection import DDPClient, DDPClientError, retry_delay

__all__ = ["DDPClient", "DDPClientError", "retry_delay"]
