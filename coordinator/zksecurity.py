"""How the ZooKeeper coordinator authenticates and encrypts: the digest credential and TLS.

Job: hold and check the options (``ZooKeeperSecurity``), turn them into what kazoo takes
(``auth_data``, the ``acl`` every created znode carries, ``tls_kwargs``), tell which
existing ACLs the coordinator takes over (``is_open``: an unsecured relay made them), and
keep the credential out of kazoo's debug log lines (``RedactAuth``).

With a digest, every znode the coordinator creates carries one ACL entry: all
permissions for ``digest:<user>:<base64 sha1(user:password)>`` (kazoo's
``make_digest_acl``), so a client without the credential can neither list, read nor
change session records, members or election nodes.

Must not: talk to ZooKeeper, read the environment or a file (the paths are checked by
the caller, e.g. ``relay.config``, whose messages name the variables), or put the
password in a repr, str or log line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kazoo.protocol.serialization import Auth
from kazoo.security import ACL, make_digest_acl

__all__ = ["RedactAuth", "ZooKeeperSecurity", "is_open", "split_digest"]

REDACTED = "<redacted>"


def split_digest(digest: str) -> tuple[str, str]:
    """``("user", "password")`` of ``"user:password"``; ValueError without quoting it.

    The user name ends at the first ":" (ZooKeeper's digest scheme splits there), so
    the password may hold ":". Control characters are refused: a trailing newline from
    a secret file would otherwise become part of the password and match nothing.
    """
    user, sep, password = digest.partition(":")
    if not sep or not user or not password:
        raise ValueError("the digest credential must look like 'user:password'")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in digest):
        raise ValueError(
            "the digest credential contains a control character "
            "(a trailing newline from a secret file?)"
        )
    return user, password


@dataclass(frozen=True, slots=True)
class ZooKeeperSecurity:
    """Digest auth and TLS options of a ZooKeeper connection; all off by default.

    ``digest``: "user:password" ("" = no auth, znodes open to anyone as before).
    ``tls``: connect with TLS; ``tls_ca``: PEM CA bundle to trust (besides the system
    ones); ``tls_cert``/``tls_key``: PEM client certificate and key, both or neither;
    ``tls_verify``: verify the server's certificate and that it names the host of the
    connect string (False: encryption without authentication of the server).
    """

    digest: str = field(default="", repr=False)
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_verify: bool = True

    def __post_init__(self) -> None:
        if self.digest:
            split_digest(self.digest)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("a TLS client certificate needs its key, and a key its certificate")
        if not self.tls and (self.tls_ca or self.tls_cert or not self.tls_verify):
            raise ValueError("TLS options are set but TLS is off")

    def __repr__(self) -> str:
        user = split_digest(self.digest)[0] if self.digest else ""
        return (
            f"ZooKeeperSecurity(digest_user={user!r}, tls={self.tls!r}, "
            f"tls_ca={self.tls_ca!r}, tls_cert={self.tls_cert!r}, tls_key={self.tls_key!r}, "
            f"tls_verify={self.tls_verify!r})"
        )

    def auth_data(self) -> list[tuple[str, str]]:
        """What kazoo sends as ``addAuth`` after every (re)connect, before any request."""
        return [("digest", self.digest)] if self.digest else []

    def acl(self) -> list[ACL] | None:
        """The ACL of every znode we create; None leaves kazoo's open default."""
        if not self.digest:
            return None
        user, password = split_digest(self.digest)
        return [make_digest_acl(user, password, all=True)]

    def tls_kwargs(self) -> dict[str, Any]:
        """KazooClient keyword arguments for TLS ({} without TLS)."""
        if not self.tls:
            return {}
        return {
            "use_ssl": True,
            "ca": self.tls_ca or None,
            "certfile": self.tls_cert or None,
            "keyfile": self.tls_key or None,
            "verify_certs": self.tls_verify,
            # kazoo checks the name only when asked; a verified certificate that names
            # another host would let anyone with a cert from the same CA pose as ZooKeeper.
            "check_hostname": self.tls_verify,
        }


def is_open(acls: Sequence[ACL]) -> bool:
    """Whether an ACL grants anything to everyone (``world:anyone``, kazoo's default)."""
    return any(entry.id.scheme == "world" for entry in acls)


class RedactAuth(logging.Filter):
    """Blanks the credential of kazoo's ``Auth`` requests in its log records.

    kazoo logs every request it sends at DEBUG, ``Auth`` included, whose text holds
    "user:password"; attached to the logger given to the KazooClient.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, Auth) for a in record.args):
            record.args = tuple(
                a._replace(auth=REDACTED) if isinstance(a, Auth) else a for a in record.args
            )
        return True
