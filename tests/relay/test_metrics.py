"""relay.metrics: the bounded method label, the byte tally, the /proc parser and reader,
pre-created label values, and the multiprocess exposition (liveall process gauges carry a
pid label; a dead worker's are gone).

The multiprocess cases run in a child interpreter: prometheus-client picks its value
storage when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from relay.metrics import (
    BACKFILL_REASONS,
    CHANNEL_CLASSES,
    LIMITS,
    METHOD_LABEL_CAP,
    METHOD_LABEL_CHARS,
    OTHER,
    PROTOCOL_ERROR_REASONS,
    RESYNC_REASONS,
    MethodLabels,
    Tally,
    get_metrics,
    parse_stat,
    precreate,
    read_process,
    record_process,
    render,
)

ROOT = Path(__file__).resolve().parents[2]


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# -- the method label --------------------------------------------------------------------------


@given(st.lists(st.text(min_size=0, max_size=120), max_size=60), st.integers(0, 20))
def test_method_labels_are_the_first_names_up_to_the_cap_then_other(
    names: list[str], cap: int
) -> None:
    labels = MethodLabels(cap)
    admitted: list[str] = []  # the brute-force model: first distinct eligible names
    for name in names:
        eligible = len(name) <= METHOD_LABEL_CHARS and name != OTHER
        if eligible and name not in admitted and len(admitted) < cap:
            admitted.append(name)
        want = name if name in admitted else OTHER
        assert labels(name) == want
    assert len({labels(n) for n in names} - {OTHER}) <= cap


def test_the_default_cap_bounds_a_flood_of_registered_names() -> None:
    labels = MethodLabels()
    seen = {labels(f"m{i}") for i in range(METHOD_LABEL_CAP * 3)}
    assert len(seen) == METHOD_LABEL_CAP + 1 and OTHER in seen
    assert labels("m0") == "m0"  # an admitted name keeps its label
    assert labels("x" * (METHOD_LABEL_CHARS + 1)) == OTHER


# -- the tally ------------------------------------------------------------------------------


def test_the_tally_moves_its_bytes_into_the_counter_once() -> None:
    metrics = get_metrics()
    before = sample("ddp_relay_bytes_sent_total") or 0.0
    tally = Tally()
    tally.bytes_sent += 1000
    tally.bytes_sent += 24
    tally.flush(metrics)
    tally.flush(metrics)  # nothing new: nothing added
    assert sample("ddp_relay_bytes_sent_total") == before + 1024
    assert tally.bytes_sent == 0


# -- /proc -----------------------------------------------------------------------------------


def _stat_line(pid: int, comm: str, utime: int, stime: int, rss: int) -> str:
    fields = ["S", *map(str, range(4, 14)), str(utime), str(stime), *map(str, range(16, 24))]
    fields.append(str(rss))
    fields.extend(map(str, range(25, 53)))
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


@given(
    st.integers(1, 2**22),
    st.text(alphabet=st.sampled_from("ab )(x 1"), max_size=16),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, 2**30),
    st.sampled_from([100, 250, 1000]),
    st.sampled_from([4096, 16384]),
)
def test_parse_stat_counts_fields_after_the_last_parenthesis(
    pid: int, comm: str, utime: int, stime: int, rss: int, ticks: int, page: int
) -> None:
    """A command may hold spaces and parentheses (``(a) (b)``): fields are counted after
    the last ``)``, as ``man 5 proc`` says."""
    cpu, resident = parse_stat(_stat_line(pid, comm, utime, stime, rss), ticks, page)
    assert cpu == (utime + stime) / ticks
    assert resident == rss * page


@pytest.mark.parametrize(
    "text", ["", "12 no parenthesis 1 2 3", "1 (x) S 1 2 3", "1 (x) " + "a " * 30]
)
def test_parse_stat_refuses_what_is_not_a_stat_line(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(text, 100, 4096)


def test_read_process_reads_this_process(tmp_path: Path) -> None:
    stats = read_process()
    assert stats.resident_bytes > 1_000_000
    assert stats.cpu_seconds > 0
    assert 0 < stats.open_fds <= stats.max_fds
    opened = [open(tmp_path / f"f{i}", "w") for i in range(5)]  # noqa: SIM115
    try:
        assert read_process().open_fds >= stats.open_fds + 5
    finally:
        for f in opened:
            f.close()


def test_read_process_fails_clearly_without_proc(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_process(str(tmp_path / "nowhere"))
    (tmp_path / "stat").write_text("garbage")
    (tmp_path / "fd").mkdir()
    with pytest.raises(ValueError):
        read_process(str(tmp_path))


def test_record_process_sets_the_gauges() -> None:
    metrics = get_metrics()
    record_process(metrics, read_process())
    assert (sample("ddp_relay_process_resident_memory_bytes") or 0) > 1_000_000
    assert (sample("ddp_relay_process_open_fds") or 0) > 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert sample("ddp_relay_process_max_fds") == float(soft)


# -- pre-created label values -----------------------------------------------------------------


def test_precreate_makes_every_alerting_series_exist_at_zero() -> None:
    metrics = get_metrics()
    precreate(metrics, disconnects=("slow", "shutdown"), resumes=("resumed", "lost"))
    text = render()[0].decode()
    for reason in ("slow", "shutdown"):
        assert f'ddp_relay_disconnects_total{{reason="{reason}"}}' in text
    for outcome in ("resumed", "lost"):
        assert f'ddp_relay_resumes_total{{outcome="{outcome}"}}' in text
    for reason in RESYNC_REASONS:
        assert f'ddp_relay_resyncs_total{{reason="{reason}"}}' in text
    for reason in BACKFILL_REASONS:
        assert f'ddp_relay_backfills_total{{reason="{reason}"}}' in text
    for channel_class in CHANNEL_CLASSES:
        assert f'ddp_relay_listener_lag_seconds{{channel_class="{channel_class}"}}' in text
        assert f'ddp_relay_listener_lag_changes{{channel_class="{channel_class}"}}' in text
    assert 'ddp_relay_method_seconds_count{method="other"}' in text
    for limit in LIMITS:
        assert f'ddp_relay_limited_total{{limit="{limit}"}}' in text
    for reason in PROTOCOL_ERROR_REASONS:
        assert f'ddp_relay_protocol_errors_total{{reason="{reason}"}}' in text


def test_the_pre_created_limits_and_reasons_are_the_ones_the_relay_counts() -> None:
    # Every literal label the runtime counts a refusal or a protocol error under is
    # pre-created, and every pre-created one is a label the runtime uses (or, for the
    # protocol errors, a reason relay.protocol raises).
    sources = {p: p.read_text(encoding="utf-8") for p in (ROOT / "relay").rglob("*.py")}
    used = {m for text in sources.values() for m in re.findall(r'limit="([a-z_]+)"', text)}
    used |= {m for text in sources.values() for m in re.findall(r'label="([a-z_]+)"', text)}
    assert used - {"rule"} <= set(LIMITS) and "rule" in LIMITS
    counted = "".join(text for path, text in sources.items() if path.name != "metrics.py")
    for limit in LIMITS:
        assert f'"{limit}"' in counted, limit
    protocol = "".join(t for p, t in sources.items() if p.parent.name in ("protocol", "server"))
    for reason in PROTOCOL_ERROR_REASONS:
        assert f'"{reason}' in protocol, reason


# -- multiprocess -----------------------------------------------------------------------------

_WORKER = textwrap.dedent(
    """
    import sys
    from relay import metrics
    m = metrics.get_metrics()
    metrics.precreate(m, disconnects=("slow",))
    metrics.record_process(m, metrics.read_process())
    metrics.set_build_info(m, "9.9", "3.x", "none")
    m.listener_connected.set(int(sys.argv[1]))
    m.sessions.set(int(sys.argv[2]))
    m.bytes_sent.inc(int(sys.argv[3]))
    print(__import__("os").getpid())
    """
)
_SCRAPE = textwrap.dedent(
    """
    import sys
    from relay import metrics
    for dead in sys.argv[1:]:
        metrics.mark_process_dead(int(dead))
    sys.stdout.write(metrics.render()[0].decode())
    """
)


def _python(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_aggregation_of_two_workers(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    first = _python(_WORKER, env, "1", "3", "100").strip()
    second = _python(_WORKER, env, "0", "4", "50").strip()
    # The processes exited; as far as the files go they are alive until marked dead.
    text = _python(_SCRAPE, env)
    lines = text.splitlines()
    assert "ddp_relay_listener_connected 0.0" in lines  # livemin: the worst worker
    assert "ddp_relay_sessions 7.0" in lines  # livesum
    assert "ddp_relay_bytes_sent_total 150.0" in lines
    assert 'ddp_relay_build_info{django="none",python="3.x",version="9.9"} 1.0' in lines
    assert 'ddp_relay_disconnects_total{reason="slow"} 0.0' in lines
    for pid in (first, second):  # liveall: one series per worker, labelled pid
        assert any(
            line.startswith(f'ddp_relay_process_open_fds{{pid="{pid}"}}') for line in lines
        ), text
    after = _python(_SCRAPE, env, first)
    assert f'pid="{first}"' not in after
    assert f'ddp_relay_process_max_fds{{pid="{second}"}}' in after
    assert "ddp_relay_sessions 4.0" in after.splitlines()
    assert "ddp_relay_bytes_sent_total 150.0" in after.splitlines()  # counters stay
