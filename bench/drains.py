#!/usr/bin/env python3
"""Benchmark: a log drain's throughput and delay.

Boots the box (tests/box), bootstraps it, deploys a site, starts a real
rsyslog collector over TLS (as tests/box/test_drains.py does) in the same
box, or with --two-boxes in a second box joined by a private link (a veth
pair, 192.0.2.0/24), and adds a drain to it, then measures:

- delay: --lines-slow lines written 50 a second into the site's log, each
  with the time it was written; the collector stamps when it received
  each (same clock): p50 and p99 of the difference;
- throughput: --lines lines appended to the site's log at once; the time
  until the last arrives, every one counted (lines per second shipped,
  and how many were lost or repeated).

Needs root. Run: sudo python3 bench/drains.py [--two-boxes]
"""

from __future__ import annotations

import argparse
import calendar
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/box"))

from machine import SRC, Box, build_image, commit, link  # noqa: E402
from test_drains import APP, CERTS, COLLECTOR, COLLECTOR_CONF, URL, collector  # noqa: E402

LOG = "/srv/sites/shop/shared/logs/frontend.log"
# The collector also writes when it received each record (microseconds), and
# queues as rsyslog does by default (the test's collector writes each record
# before it reads the next, so that a stop loses nothing it received).
STAMPED = COLLECTOR_CONF.replace('string="%rawmsg%\\n"',
                                 'string="%timegenerated:::date-rfc3339% %rawmsg%\\n"').replace(
    'main_queue(queue.type="Direct")', "")


def received(box, marker: str) -> list[str]:
    """The collector's lines holding marker (box: the collector's)."""
    return box.sh(f"grep -F ' {marker} ' {COLLECTOR}/received.log || true").stdout.splitlines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=200000)
    p.add_argument("--lines-slow", type=int, default=500)
    p.add_argument("--two-boxes", action="store_true",
                   help="the collector in a second box on a private link")
    args = p.parse_args()
    box = Box(build_image()).start()
    far = Box(build_image()).start() if args.two_boxes else box
    try:
        box.siteops("bootstrap")
        box.siteops("add-site shop --domain shop.test --components frontend")
        commit(box, "/srv/repos/shop", {k: v for k, v in APP.items() if k != "tick.py"}
               | {"siteops.toml": '[frontend]\nstart = "python3 app.py"\n'}, "shop")
        box.siteops("deploy shop --repo /srv/repos/shop")
        if far is not box:
            link(box, far, "192.0.2.1", "192.0.2.2", "dr0")
            box.sh("echo '192.0.2.2 collector.test' >> /etc/hosts")
        far.sh(CERTS)
        far.sh(f"cat > {COLLECTOR}/collector.conf", input=STAMPED)
        collector(far, True)
        box.sh(f"{SRC}/bin/logs shop drain add {URL} --ca -",
               input=far.sh(f"cat {COLLECTOR}/ca.pem").stdout)
        time.sleep(2)
        # Delay: a line 50 times a second, each with the time it was written.
        box.sh(f"python3 -c \"import time\nfor i in range({args.lines_slow}):\n"
               f"    open('{LOG}', 'a').write(f'slow %d %.6f\\\\n' % (i, time.time()))\n"
               "    time.sleep(0.02)\"")
        deadline = time.time() + 60
        while len(received(far, "slow")) < args.lines_slow and time.time() < deadline:
            time.sleep(0.5)
        delays = []
        for line in received(far, "slow"):
            got = calendar.timegm(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")) + float(
                "0" + line[19:line.index("+", 19)])
            delays.append(got - float(line.split()[-1]))
        delays.sort()
        # Throughput: many lines at once.
        before = int(far.sh(f"wc -l < {COLLECTOR}/received.log").stdout)  # before the burst
        start = time.time()
        box.sh(f"seq -f 'fast %.0f x' 1 {args.lines} >> {LOG}")
        deadline = start + 600
        while time.time() < deadline:  # a line count: cheap beside the shipping it measures
            count = int(far.sh(f"wc -l < {COLLECTOR}/received.log").stdout) - before
            if count >= args.lines:
                break
            time.sleep(0.5)
        took = time.time() - start
        numbers = [int(line.split()[-2]) for line in received(far, "fast")]
        lost = args.lines - len(set(numbers))
        print(f"| delay, written to received (p50 / p99, {len(delays)} lines at 50/s) | "
              f"{1000 * delays[len(delays) // 2]:.1f} / "
              f"{1000 * delays[int(len(delays) * 0.99)]:.1f} ms |")
        print(f"| throughput ({args.lines} lines at once) | {len(numbers) / took:,.0f} lines/s "
              f"({took:.1f} s), {lost} lost, {len(numbers) - len(set(numbers))} repeated |")
        print(f"(delay mean {1000 * statistics.mean(delays):.1f} ms)")
    finally:
        box.stop()
        if far is not box:
            far.stop()


if __name__ == "__main__":
    main()
