"""The example Django project of ddp-relay: a bookstore published over DDP."""
