"""The relay server: the WSGI app, the gunicorn worker, and the node that owns the sessions.

``app`` is the composition root (settings, backend, node), ``worker`` the gunicorn worker
(the only module that monkey-patches), ``gunicorn_conf`` the gunicorn settings, ``node``
one worker process's sessions and background duties, ``session`` one DDP session, and
``workpool`` the bounded greenlets that run backend (ORM) calls.

Must not: be imported by ``relay.protocol``, ``relay.transport`` or ``relay.stream``
(they are below it). Importing this package has no side effects.
"""
