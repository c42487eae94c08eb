"""Cluster coordination for ddp-relay (relay membership, session ownership, leadership).

Depends on the standard library and kazoo only; never imports ``relay`` or Django.
"""
