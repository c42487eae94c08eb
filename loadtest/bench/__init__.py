"""The benchmark of one relay worker: ``python -m loadtest.bench`` (see ``cli.py``).

Modules: ``stack`` (throwaway PostgreSQL, example app, one gunicorn relay worker, /proc
figures), ``generator`` + ``loadgen.js`` (N WebSocket DDP sessions in one Node.js process),
``writer`` (committed renames with their commit times; trigger overhead), ``runner`` (one
measured run), ``cli`` (the command, aggregation over runs, the tables). Figures and the
method are in ``docs/benchmarks.md``.
"""
