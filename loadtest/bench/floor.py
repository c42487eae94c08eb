"""The floor under fan-out's CPU: what one loopback ``send()`` of a small WebSocket frame
costs on this machine, with nothing else around it.

``send_floor`` opens ``sockets`` TCP connections on 127.0.0.1 to a child process that
reads them all with epoll (as the load generator reads its sessions: a real reader, whose
wake-ups the sender's kernel work includes), then sends one 160-byte frame to each socket,
``rounds`` times, paced like the benchmark's writes, from a plain Python loop, and
returns the sender's CPU time per send in µs. On loopback the sender's ``send()`` also
runs the receiving side's TCP (softirq) work, so this is more than a send to a remote
client costs; it is what every server in ``versus`` pays per delivery here, whatever
its language, and the part of its CPU per delivery no code of its own can remove.

Must not: touch a relay, a database or the generator; run longer than a few seconds.
"""

from __future__ import annotations

import os
import select
import socket
import time

#: A ``changed`` frame of the benchmark's size: a 4-byte header and 156 bytes of text.
FRAME = b"\x81\x7e\x00\x9c" + b"x" * 156


def _reader(listener: socket.socket, sockets: int, seconds: float) -> None:
    """The child: connect ``sockets`` times, then read every socket until ``seconds``."""
    port = listener.getsockname()[1]
    listener.close()
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(sockets)]
    poll = select.epoll()
    by_fd = {}
    for conn in conns:
        conn.setblocking(False)
        poll.register(conn.fileno(), select.EPOLLIN)
        by_fd[conn.fileno()] = conn
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, _ in poll.poll(0.2):
            try:
                if not by_fd[fd].recv(65536):
                    os._exit(0)
            except BlockingIOError:
                pass
    os._exit(0)


def send_floor(sockets: int, rounds: int = 20, pause: float = 0.05) -> float:
    """µs of this process's CPU per ``send()`` of ``FRAME`` to one of ``sockets`` loopback
    sockets read by another process (see the module)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(min(sockets, 4096))
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child exits by itself)
        try:
            _reader(listener, sockets, 60.0)
        finally:
            os._exit(0)
    peers: list[socket.socket] = []
    try:
        for _ in range(sockets):
            conn, _ = listener.accept()
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peers.append(conn)
        sends = [conn.send for conn in peers]
        time.sleep(0.2)
        cpu = 0.0
        for _ in range(rounds):
            started = time.process_time()
            for send in sends:
                send(FRAME)
            cpu += time.process_time() - started
            time.sleep(pause)  # the reader catches up, as between the benchmark's writes
        return cpu * 1e6 / (rounds * sockets)
    finally:
        for conn in peers:
            conn.close()
        listener.close()
        os.kill(pid, 9)
        os.waitpid(pid, 0)
