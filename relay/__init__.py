"""ddp-relay: Meteor's DDP server for Django and PostgreSQL, at cluster scale.

Importing ``relay`` has no side effects: no gevent, no monkey-patching, no Django. The
layers are described in ``docs/architecture.md``; the pure protocol core is
``relay.protocol``.
"""

__version__ = "0.1.0"
