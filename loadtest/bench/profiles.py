"""Summarise a ``--profile`` file: where the relay worker's fan-out time goes.

``python -m loadtest.bench.profiles <workdir>/profiles/<file>.txt`` reads py-spy's raw
output (one collapsed stack and its sample count per line) and prints the share of the
samples that route a change to the sessions (``Streams.deliver``), split by the first of
these it passes through, as in docs/benchmarks.md; then the functions with the most
samples of their own.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

#: (label, a frame that marks it), tested in this order.
CATEGORIES = (
    ("per-session diff (MergeBox.change)", "MergeBox.change"),
    ("framing and deflate per socket (WebSocket._frame)", "WebSocket._frame"),
    ("send() per socket (WebSocket._try_direct_write)", "_try_direct_write"),
    ("Prometheus counters (Counter.inc)", "Counter.inc"),
    ("encoding (BatchCache.encode)", "BatchCache.encode"),
    ("decoding the change (decode_change)", "decode_change"),
)
FANOUT = "Streams.deliver"


def summarise(path: Path, top: int = 15) -> str:
    total = fanout = 0
    shares: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        own[stack.split(";")[-1]] += n
        if FANOUT not in stack:
            continue
        fanout += n
        for label, marker in CATEGORIES:
            if marker in stack:
                shares[label] += n
                break
        else:
            shares["the rest of the per-session loop"] += n
    if not total:
        return f"{path}: no samples"
    lines = [
        f"{path}: {total} samples; {FANOUT}: {fanout} ({100 * fanout / total:.0f}% of all)",
    ]
    for label, n in shares.most_common():
        lines.append(f"  {100 * n / max(1, fanout):4.0f}%  {label}")
    lines.append("functions with the most samples of their own (% of all samples):")
    for name, n in own.most_common(top):
        lines.append(f"  {100 * n / total:4.1f}%  {name}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for arg in argv:
        print(summarise(Path(arg)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
