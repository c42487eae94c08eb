"""What the probe reads from /proc: a worker's memory, and which worker holds a socket.

Memory: ``VmRSS`` (resident now) and ``VmHWM`` (the kernel's high-water mark of it) from
``/proc/<pid>/status``. ``reset_peak`` writes ``5`` to ``/proc/<pid>/clear_refs``, which
sets the high-water mark back to the current RSS (Linux 4.0+), so the peak read after an
attack is the attack's, exact, and not a sample that could miss a short spike.
``RssSampler`` also samples ``VmRSS`` every few milliseconds for the time series.

Sockets: ``/proc/net/tcp`` lists every IPv4 TCP socket with its inode; a process's
``/proc/<pid>/fd`` links name the socket inodes it holds. Together they say which gunicorn
worker accepted a given client connection (``worker_of``) and how many connections from
one address each worker holds (``connections_by_worker``): the kernel, not the probe,
spreads connections over the workers of a shared listening socket.

Must not: start or stop anything, or read anything but /proc. IPv4 only (the relays the
probe starts listen on 127.0.0.1).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: /proc/net/tcp state of a listening socket.
LISTEN = 0x0A


def parse_status(text: str) -> dict[str, int]:
    """The ``kB`` fields of a ``/proc/<pid>/status`` text, in bytes."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[name] = int(parts[0]) * 1024
    return out


def memory(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (and the other kB fields) of ``pid``; empty once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return parse_status(f.read())
    except OSError:
        return {}


def reset_peak(pid: int) -> bool:
    """Set ``pid``'s ``VmHWM`` back to its current RSS; False when not allowed or gone."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def decode_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` (as /proc/net/tcp writes it) -> ``("127.0.0.1", 8080)``.

    The address is the 32-bit word in the machine's byte order, printed in hex; the port
    is printed as a number.
    """
    host, _, port = text.partition(":")
    if len(host) != 8:
        raise ValueError(f"not an IPv4 /proc/net/tcp address: {text!r}")
    return socket.inet_ntoa(struct.pack("=I", int(host, 16))), int(port, 16)


def encode_address(ip: str, port: int) -> str:
    """The inverse of ``decode_address``."""
    (word,) = struct.unpack("=I", socket.inet_aton(ip))
    return f"{word:08X}:{port:04X}"


@dataclass(frozen=True, slots=True)
class TcpEntry:
    local: tuple[str, int]
    remote: tuple[str, int]
    state: int
    inode: int


def parse_tcp_table(text: str) -> list[TcpEntry]:
    """The rows of a ``/proc/net/tcp`` text (the header line is skipped)."""
    rows = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        try:
            rows.append(
                TcpEntry(
                    decode_address(parts[1]),
                    decode_address(parts[2]),
                    int(parts[3], 16),
                    int(parts[9]),
                )
            )
        except ValueError:
            continue
    return rows


def tcp_table() -> list[TcpEntry]:
    try:
        with open("/proc/net/tcp") as f:
            return parse_tcp_table(f.read())
    except OSError:
        return []


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds open (empty once it is gone)."""
    out: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def worker_of(client: tuple[str, int], server_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the server side of the connection from ``client`` (its
    local address) to ``server_port``; None when none does (yet, or any more)."""
    inodes = {
        e.inode
        for e in tcp_table()
        if e.local[1] == server_port and e.remote == (client[0], client[1]) and e.inode
    }
    if not inodes:
        return None
    for pid in pids:
        if inodes & socket_inodes(pid):
            return pid
    return None


def connections_by_worker(source: str, server_port: int, pids: list[int]) -> dict[int, int]:
    """Connections from address ``source`` to ``server_port`` each of ``pids`` holds open,
    whatever their TCP state (one the relay is closing while the peer still sends is
    half-closed, and still costs the worker)."""
    inodes = {
        e.inode
        for e in tcp_table()
        if e.local[1] == server_port and e.remote[0] == source and e.state != LISTEN and e.inode
    }
    return {pid: len(inodes & socket_inodes(pid)) for pid in pids}


@dataclass
class RssSampler:
    """Samples ``VmRSS`` of the processes ``pids()`` names every ``interval`` seconds in a
    thread, until ``stop``. ``peak`` holds each pid's largest sample, ``series`` one
    ``(time.time(), {pid: bytes})`` point per ``every`` seconds."""

    pids: Callable[[], list[int]]
    interval: float = 0.02
    every: float = 0.5
    peak: dict[int, int] = field(default_factory=dict)
    series: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            now = time.time()
            values = {}
            for pid in self.pids():
                rss = memory(pid).get("VmRSS")
                if rss is None:
                    continue
                values[pid] = rss
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            if now - last >= self.every:
                self.series.append((now, values))
                last = now
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
