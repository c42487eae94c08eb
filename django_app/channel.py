"""Change-stream channel names: one PostgreSQL NOTIFY channel per published model.

Job: turn a model into ``ddp_<app_label>_<model_name>``, a lower-case identifier that
LISTEN/NOTIFY accept without quoting, short enough to survive PostgreSQL's 63-byte
identifier limit even after a partition suffix (``_p17``) is appended later. Names that
are too long or not plain ASCII are truncated and suffixed with a short hash, so two
models never share a channel. What must not live here: LISTEN, NOTIFY or any database
access; the write side and the relay both use these names.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from django.db.models import Model

__all__ = ["CHANNEL_MAX_BYTES", "PARTITION_SUFFIX_BYTES", "channel_name", "model_channel"]

#: PostgreSQL truncates identifiers (NOTIFY channels included) to NAMEDATALEN - 1 bytes.
CHANNEL_MAX_BYTES: Final = 63
#: Bytes kept free for a partition suffix such as ``_p1234`` (see DESIGN.md section 4).
PARTITION_SUFFIX_BYTES: Final = 6
_BASE_MAX_BYTES: Final = CHANNEL_MAX_BYTES - PARTITION_SUFFIX_BYTES
_SAFE: Final = re.compile(r"[a-z0-9_]+")
_UNSAFE_CHAR: Final = re.compile(r"[^a-z0-9_]")
_HASH_CHARS: Final = 8


def channel_name(app_label: str, model_name: str) -> tuple[str, bool]:
    """The channel for ``app_label.model_name`` and whether it had to be shortened/hashed."""
    wanted = f"ddp_{app_label}_{model_name}".lower()
    if _SAFE.fullmatch(wanted) and len(wanted) <= _BASE_MAX_BYTES:
        return wanted, False
    digest = hashlib.sha256(wanted.encode()).hexdigest()[:_HASH_CHARS]
    safe = _UNSAFE_CHAR.sub("_", wanted)
    return f"{safe[: _BASE_MAX_BYTES - _HASH_CHARS - 1]}_{digest}", True


def model_channel(model: type[Model]) -> str:
    """The change-stream channel of ``model``."""
    opts = model._meta
    return channel_name(opts.app_label, opts.model_name or model.__name__.lower())[0]
