"""SockJS sessions over HTTP, across the cluster: any request of a session on any relay.

A SockJS session over ``xhr-streaming``, ``xhr-polling``, ``eventsource``, ``htmlfile`` or
``jsonp`` is a series of HTTP requests, and behind a round-robin balancer each one may land
on another relay process. Here is how they all reach the one process that holds the
session (``relay.httpsession.directory``):

- the session's record in the coordinator (keyed by a hash of the SockJS session id, never
  the id itself) says which relay holds it, fenced by its epoch like a DDP session's;
- a send (``xhr_send``, ``jsonp_send``) on another relay goes through the inbox
  (``relay.httpsession.inbox``: a PostgreSQL table, rung with a NOTIFY), so it arrives
  in order, once, even if the holder restarts meanwhile;
- a receiving request on another relay takes the session over as a resume does: the
  holder parks it (its DDP session too) and the new relay claims both and goes on, the
  client none the wiser;
- the HTTP answers themselves are ``relay.httpsession.handler``'s.
"""
