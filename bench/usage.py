#!/usr/bin/env python3
"""Benchmark: `sites usage` over many sites (default 89, the port scheme's
maximum), as its minutely timer would run it.

Boots the Debian 12 box, bootstraps it, adds --sites sites (each with its
user, database, Redis and nginx site; this part takes minutes), writes
--lines access-log lines of the last five minutes into each site's log (the
format nginx writes), then times, --runs times each: the table with the CPU
share over 1 s, the JSON without it, the Prometheus export, and the same
with the du cache emptied. Prints medians. Needs root (systemd-nspawn).
Run: sudo python3 bench/usage.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))

from machine import SRC, Box, build_image  # noqa: E402

FILL = """\
import sys, time
now = time.time()
n = int(sys.argv[2])
with open(sys.argv[1], "a") as log:
    for i in range(n):
        t = now - 300 + 300 * i / n
        status = 200 if i % 50 else 502
        log.write(f'203.0.113.{i % 250} - - [26/Nov/2026:15:00:00 +0000] "GET /p/{i} HTTP/1.1" '
                  f'{status} 512 "-" "Mozilla/5.0" rt=0.004 urt="0.003" t={t:.3f}\\n')
"""


def timed(box: Box, command: str, runs: int, before: str = "true") -> float:
    times = []
    for _ in range(runs):
        box.sh(before)
        t0 = time.monotonic()
        box.sh(f"{SRC}/bin/{command} >/dev/null")
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=89)
    p.add_argument("--lines", type=int, default=2000, help="log lines per site (default 2000)")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    box = Box(build_image("bookworm")).start()
    try:
        box.siteops("bootstrap")
        t0 = time.monotonic()
        for i in range(args.sites):
            box.siteops(f"add-site s{i:02d} --domain s{i:02d}.test --components frontend")
        added = time.monotonic() - t0
        box.sh("cat > /tmp/fill.py", input=FILL)
        box.sh(f"for d in /srv/sites/*/shared/logs; do python3 /tmp/fill.py "
               f"$d/nginx-access.log {args.lines}; done")
        print(f"{args.sites} sites added in {added:.0f} s; {args.lines} log lines each")
        box.sh("mkdir -p /var/lib/prometheus/node-exporter")
        figures = {
            "sites usage (table, CPU share over 1 s)": timed(box, "sites usage", args.runs),
            "sites usage --json --interval 0": timed(box, "sites usage --json --interval 0",
                                                     args.runs),
            "sites usage --prometheus-dir (the timer)": timed(
                box, "sites usage --prometheus-dir /var/lib/prometheus/node-exporter", args.runs),
            "the same, du cache emptied": timed(
                box, "sites usage --prometheus-dir /var/lib/prometheus/node-exporter", args.runs,
                before="rm -f /var/lib/siteops/usage-disk.json"),
        }
        lines = box.sh("wc -l < /var/lib/prometheus/node-exporter/siteops.prom").stdout.strip()
        for what, seconds in figures.items():
            print(f"{what:<45} {seconds:5.2f} s (median of {args.runs})")
        print(f"siteops.prom: {lines} lines")
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
