"""The relay server: the WSGI app, the gunicorn worker, the node that composes a worker.

``app`` is the composition root (settings, backend, node), ``worker`` the gunicorn worker
(the only module that monkey-patches), ``gunicorn_conf`` the gunicorn settings, ``node``
composes one worker process (and adopts its sockets), ``session`` one DDP session, which
sees the worker only through its ``context`` (``SessionContext``), ``hub`` the open
sessions and the drain, ``ticker`` their heartbeats and timeouts, ``housekeeper`` the
leader's periodic chores, ``keepalive`` every worker's lease renewal, ``workpool``
the bounded greenlets that run backend (ORM) calls, ``health`` the pure readiness,
liveness and startup verdicts, and ``readiness`` the worker's side of them (its report
file, the pod's verdict read from every worker's).

Must not: be imported by ``relay.protocol``, ``relay.transport`` or ``relay.stream``
(they are below it). Importing this package has no side effects.
"""
