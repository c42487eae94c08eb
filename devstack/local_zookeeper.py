"""How a throwaway ZooKeeper server is run on loopback: its ``zoo.cfg``, its command line.

Outside the layers, like ``devstack.embedded_postgres``: ``devstack.cluster`` (a 3-node
ensemble for ``make cluster``) and ``tests/fixtures/zookeeper.py`` (one standalone server
for the test session) both start ZooKeeper 3.8 from Debian's ``zookeeper`` package this
way (``java ... QuorumPeerMain zoo.cfg``, no ``zkServer.sh``, so data and logs stay in the
caller's directory). Standard library only.

Its job: find ``java`` and the jar (``find_zookeeper``), write the text of a ``zoo.cfg``
(``config``; with ``ServerTLS``, also a TLS ``secureClientPort`` served by Netty from PEM
files), build the JVM's argv (``command``; with ``tls=True`` it adds the Netty jars that
Debian's zookeeper.jar manifest leaves out), and ask a running server how it is
(``four_letter``, ``mode``, ``serving``: always over the plain client port).

What it must not do: start, supervise or stop a process (``devstack.processes`` and the
callers do that), install anything, touch the system's ZooKeeper (``/etc/zookeeper``
is read for its log configuration only, ``/var/lib/zookeeper`` never), or configure a
server to listen on anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "HOST",
    "ZOOKEEPER_JAR",
    "ServerTLS",
    "ZooKeeperNotFound",
    "command",
    "config",
    "find_zookeeper",
    "four_letter",
    "mode",
    "serving",
]

HOST = "127.0.0.1"
ZOOKEEPER_JAR = Path(os.environ.get("RELAY_ZOOKEEPER_JAR", "/usr/share/java/zookeeper.jar"))
SLF4J_JAR = Path("/usr/share/java/slf4j-simple.jar")
ZOOKEEPER_CONF_DIR = Path("/etc/zookeeper/conf")
# Netty's TLS handler needs these beside what zookeeper.jar's manifest lists.
NETTY_JARS = tuple(
    Path("/usr/share/java") / name
    for name in ("netty-codec.jar", "netty-resolver.jar", "netty-transport-native-unix-common.jar")
)


@dataclass(frozen=True, slots=True)
class ServerTLS:
    """A TLS client port: ``key_store`` is one PEM file with the server's private key and
    certificate (chain), ``trust_store`` the PEM CA(s) client certificates are checked
    against; ``client_auth``: whether clients must (``need``), may (``want``) or need not
    (``none``) present one. The server does not check client certificates' host names."""

    port: int
    key_store: Path
    trust_store: Path
    client_auth: Literal["none", "want", "need"] = "want"


class ZooKeeperNotFound(RuntimeError):
    """``java`` or the ZooKeeper jar is missing."""


def find_zookeeper() -> tuple[str, Path]:
    """``java`` and the ZooKeeper jar, or ``ZooKeeperNotFound`` saying how to get them."""
    java = shutil.which("java")
    if java is None:
        raise ZooKeeperNotFound("no `java` on PATH (apt: `zookeeper` pulls in a JRE)")
    if not ZOOKEEPER_JAR.is_file():
        raise ZooKeeperNotFound(f"{ZOOKEEPER_JAR} is missing (apt: `zookeeper`)")
    return java, ZOOKEEPER_JAR


def config(
    *,
    data_dir: Path,
    client_port: int,
    tick_ms: int = 500,
    init_limit: int = 10,
    servers: Mapping[int, tuple[int, int]] | None = None,
    header: str = "",
    tls: ServerTLS | None = None,
) -> str:
    """The text of a ``zoo.cfg`` serving ``client_port`` on 127.0.0.1.

    With ``tls``: also ``tls.port`` with TLS on 127.0.0.1 (the Netty connection factory
    serves both; start the JVM with ``command(..., tls=True)``).

    Without ``servers``: a standalone server. With ``servers`` (``{myid: (peer_port,
    election_port)}``, this one included): a member of that ensemble that never falls back
    to standalone and purges old snapshots. The caller writes ``data_dir/myid``.
    """
    lines = [
        *([header] if header else []),
        f"tickTime={tick_ms}",
        f"initLimit={init_limit}",
        "syncLimit=5",
        f"dataDir={data_dir}",
        f"clientPort={client_port}",
        f"clientPortAddress={HOST}",
        "admin.enableServer=false",
        "4lw.commands.whitelist=ruok,srvr,stat,mntr",
    ]
    if servers:
        lines += ["standaloneEnabled=false", "autopurge.snapRetainCount=3"]
        lines.append("autopurge.purgeInterval=1")
        lines += [f"server.{i}={HOST}:{peer}:{election}" for i, (peer, election) in servers.items()]
    if tls is not None:
        lines += [
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"secureClientPort={tls.port}",
            f"secureClientPortAddress={HOST}",
            f"ssl.keyStore.location={tls.key_store}",
            "ssl.keyStore.type=PEM",
            f"ssl.trustStore.location={tls.trust_store}",
            "ssl.trustStore.type=PEM",
            f"ssl.clientAuth={tls.client_auth}",
            # Client certificates name a client, not the address it connects from.
            "ssl.hostnameVerification=false",
        ]
    return "".join(f"{line}\n" for line in lines)


def command(java: str, jar: Path, config_path: Path, *, tls: bool = False) -> list[str]:
    """The JVM's argv: a small heap, quick start-up, ``QuorumPeerMain config_path``.

    ``tls``: for a ``config(tls=...)`` server, the Netty jars go on the class path too.
    """
    extra = "".join(f":{j}" for j in NETTY_JARS) if tls else ""
    return [
        java,
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-Dzookeeper.jmx.log4j.disable=true",
        "-cp",
        f"{jar}:{ZOOKEEPER_CONF_DIR}:{SLF4J_JAR}{extra}",
        "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        str(config_path),
    ]


def four_letter(port: int, word: bytes, timeout: float = 1.0) -> bytes:
    """Send a four-letter command (``ruok``, ``srvr``...) and return the reply."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(word)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def mode(port: int) -> str | None:
    """``leader``, ``follower``, ``standalone``... per ``srvr``; None if it won't say."""
    try:
        reply = four_letter(port, b"srvr").decode(errors="replace")
    except OSError:
        return None
    for line in reply.splitlines():
        if line.startswith("Mode:"):
            return line.split(":", 1)[1].strip()
    return None


def serving(port: int) -> bool:
    """Whether the server answers ``imok`` and serves (``imok`` comes first; ``srvr``
    names a mode only once it serves)."""
    try:
        return four_letter(port, b"ruok") == b"imok" and b"Mode:" in four_letter(port, b"srvr")
    except OSError:
        return False
