#!/usr/bin/env python3
"""Benchmark: moving a site to another host with move-site, under load.

Boots two Debian 12 boxes joined by a private link (as tests/box/test_hosts.py
does), bootstraps both, deploys on the first a site whose app writes to its
PostgreSQL, Redis and uploads, with a worker and a scheduled job, adds
--upload-mb of uploads, then moves it to the second with 20 requests/s on the
first's address. Prints the whole move's time, the write freeze (first to
last 503 the load saw) and every request's outcome. Needs root
(systemd-nspawn). Run: sudo python3 bench/move.py [--upload-mb N]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))

from machine import Box, Load, build_image, link  # noqa: E402
from test_hosts import B, data_of, moved_site  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upload-mb", type=int, default=50, help="uploads added before the move")
    args = p.parse_args()
    image = build_image("bookworm")
    a, b = Box(image), Box(image)
    try:
        for box in (a, b):
            box.start()
        link(a, b, "192.0.2.1", B, "fl0")
        for box in (a, b):
            box.siteops("bootstrap")
        a.sh("ssh-keygen -q -t ed25519 -N '' -C fleet -f /root/.ssh/fleet")
        b.sh("cat >> /root/.ssh/authorized_keys", input=a.sh("cat /root/.ssh/fleet.pub").stdout)
        a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet")
        moved_site(a, "mv")
        a.sh(f"head -c {args.upload_mb}M /dev/urandom > /srv/sites/mv/shared/uploads/big.bin "
             "&& chown mv:mv /srv/sites/mv/shared/uploads/big.bin")
        load = Load(a, "mv.test", rate=20)
        started = time.monotonic()
        out = a.siteops("move-site mv --to b").stdout
        took = time.monotonic() - started
        time.sleep(2)
        samples, failed = load.failed()
        assert data_of(a, "mv") == data_of(b, "mv"), "the data differs"
        codes = collections.Counter(s[2] for s in samples)
        freeze = failed[-1][0] - failed[0][0] if failed else 0.0
        print(out)
        print(f"site: 20 notes, 3 queued items, {args.upload_mb} MB of uploads, a worker, a job")
        print(f"move-site --to b: {took:.1f} s (command to forwarding)")
        print(f"write freeze: {freeze:.1f} s ({len(failed)} requests answered 503)")
        print(f"requests: {len(samples)}, by status: {dict(sorted(codes.items()))}")
        print("data on b identical to a's (database rows, uploads, Redis, .env)")
    finally:
        for box in (a, b):
            box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
