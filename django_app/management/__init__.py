"""Django's management-command package of the ``ddp`` app (nothing else lives here)."""
