"""The benchmark of one relay worker: ``python -m loadtest.bench`` (see ``cli.py``).

Modules: ``stack`` (throwaway PostgreSQL, example app, one gunicorn relay worker, /proc
figures), ``meter`` (CPU of the benchmark's processes over an interval), ``generator`` +
``loadgen.js`` (N WebSocket DDP sessions in one Node.js process; ``windowgen.js`` and
``stormgen.js`` for the window and storm modes; all three built on ``gencommon.js``),
``writer`` (committed renames with their commit times; trigger overhead), ``runner`` (one
measured run), ``figures`` (what every mode's run keeps of the relay, the generator and
the machine, filled the same way), ``cli`` (the command, aggregation over runs, the
tables). Issue #10's modes: ``window`` + ``books`` (live sorted, limited windows under
commits that change them), ``storm`` (subscriptions at once), ``trees`` (the relay code
of an earlier commit, with a bench-only overlay) and ``compare`` (both trees, side by
side). Figures and the method are in ``docs/benchmarks.md``. Must not: be imported by
the relay or the Django app.
"""
