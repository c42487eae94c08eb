"""``manage.py`` commands of the ``ddp`` app: thin wrappers, one per module.

Each command parses its options and calls the function that does the work
(``django_app.changes.prune``, ``django_app.triggers.sync_triggers``); what must not live
here is that work itself, so it stays callable from Python and testable without a command.
"""
