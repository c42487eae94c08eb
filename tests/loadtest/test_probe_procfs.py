"""``loadtest.probe.procfs``: memory and socket ownership read from this machine's /proc.

The parsers are property-tested (addresses round-trip); the readers run on this test
process itself: its own RSS and high-water mark, the reset of the mark, and a loopback
connection whose server side this process holds (``worker_of`` must name this pid, and
nobody once the connection is gone).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from hypothesis import given
from hypothesis import strategies as st

from loadtest.probe import procfs

STATUS = """Name:\tpython
VmPeak:\t  300000 kB
VmHWM:\t  120000 kB
VmRSS:\t  100000 kB
Threads:\t4
"""


def test_parse_status_reads_kb_fields_in_bytes() -> None:
    fields = procfs.parse_status(STATUS)
    assert fields["VmRSS"] == 100000 * 1024
    assert fields["VmHWM"] == 120000 * 1024
    assert "Threads" not in fields and "Name" not in fields


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=65535))
def test_addresses_round_trip(ip: object, port: int) -> None:
    text = procfs.encode_address(str(ip), port)
    assert procfs.decode_address(text) == (str(ip), port)


def test_decode_address_as_the_kernel_writes_loopback() -> None:
    # x86 (little-endian): 127.0.0.1 is written 0100007F.
    if sys.byteorder == "little":
        assert procfs.decode_address("0100007F:1F90") == ("127.0.0.1", 8080)


def test_parse_tcp_table_skips_the_header_and_junk() -> None:
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        f"   0: {procfs.encode_address('127.0.0.1', 8000)} "
        f"{procfs.encode_address('127.0.0.2', 40000)} 01 00000000:00000000 00:00000000 "
        "00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1\n"
        "   1: garbage\n"
    )
    (row,) = procfs.parse_tcp_table(text)
    assert row == procfs.TcpEntry(("127.0.0.1", 8000), ("127.0.0.2", 40000), 1, 4242)


def test_memory_of_this_process_and_of_none() -> None:
    mine = procfs.memory(os.getpid())
    assert 0 < mine["VmRSS"] <= mine["VmHWM"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert procfs.memory(gone.pid) == {}
    assert procfs.reset_peak(gone.pid) is False


def test_reset_peak_brings_the_mark_down_to_now() -> None:
    blob = bytearray(64 * 1024 * 1024)  # raise the high-water mark by 64 MiB
    blob[::4096] = b"x" * len(blob[::4096])
    del blob
    before = procfs.memory(os.getpid())
    assert before["VmHWM"] - before["VmRSS"] > 32 * 1024 * 1024
    assert procfs.reset_peak(os.getpid())
    after = procfs.memory(os.getpid())
    assert after["VmHWM"] - after["VmRSS"] < 8 * 1024 * 1024


def test_worker_of_finds_the_process_holding_the_server_side() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0))
    server_side, _ = listener.accept()
    try:
        local = client.getsockname()
        assert procfs.worker_of(local, port, [os.getpid()]) == os.getpid()
        assert procfs.worker_of(local, port, [1]) is None  # not init's socket
        counts = procfs.connections_by_worker("127.0.0.2", port, [os.getpid()])
        assert counts == {os.getpid(): 1}
    finally:
        client.close()
        server_side.close()
        listener.close()
    time.sleep(0.05)
    assert procfs.worker_of(local, port, [os.getpid()]) is None


def test_sampler_keeps_peaks_and_a_series() -> None:
    sampler = procfs.RssSampler(lambda: [os.getpid()], interval=0.01, every=0.05).start()
    time.sleep(0.2)
    sampler.stop()
    assert sampler.peak[os.getpid()] > 0
    assert len(sampler.series) >= 2
    assert all(os.getpid() in values for _, values in sampler.series)
