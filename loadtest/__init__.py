"""Load tests for ddp-relay: the locust scenario (``locustfile.py``) and what it drives."""
