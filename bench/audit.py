#!/usr/bin/env python3
"""Benchmark: audit over many sites.

Boots the box (tests/box), bootstraps it, adds --sites sites and deploys a
small Node.js app to each, then times `audit` and `audit --json` over the
first 10, 25 and all of them (median of --repeat runs each) and prints
seconds in total and per site, and how long each add-site took; with
--profile, where one audit's time goes. Goal:
under 10 s for 50 sites on a 2-core machine, growing linearly. Needs root.
Run: sudo python3 bench/audit.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/box"))

from machine import SRC, Box, build_image, commit  # noqa: E402

APP = {"server.js": 'require("http").createServer((q, r) => r.end("ok\\n"))'
                    '.listen(Number(process.env.PORT), process.env.HOST);\n',
       "siteops.toml": '[frontend]\nstart = "node server.js"\n'}


def timed(box: Box, command: str, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.monotonic()
        res = box.sh(f"{SRC}/bin/{command} >/dev/null", check=False)
        runs.append(time.monotonic() - start)
        if res.returncode not in (0, 1):
            raise SystemExit(f"{command} exited {res.returncode}: {res.stderr}")
    return statistics.median(runs)


def profile(box: Box) -> None:
    """The slowest commands of one audit (--trace: seconds each took; the
    side-by-side ones overlap) and the top of Python's cumulative profile."""
    trace = box.sh(f"{SRC}/bin/audit --trace 2>&1 >/dev/null", check=False).stdout
    lines = [line for line in trace.splitlines() if line[:8].strip().replace(".", "").isdigit()]
    print("slowest commands (seconds since start, seconds taken, command):")
    for line in sorted(lines, key=lambda line: -float(line.split()[1]))[:12]:
        print("  " + line[:150])
    out = box.sh(f"python3 -m cProfile -s cumulative {SRC}/bin/audit 2>/dev/null", check=False)
    table = out.stdout[out.stdout.find("   ncalls"):].splitlines()
    print("\n".join(table[:30]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=50)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--sleep-after", metavar="DURATION",
                   help="add the sites with this --sleep-after (e.g. 10s): audit of sleeping "
                        "sites, and many more of them in the machine's memory")
    p.add_argument("--profile", action="store_true",
                   help="then where one audit of every site spends its time: its slowest "
                        "commands (--trace) and Python's own profile (cProfile)")
    args = p.parse_args()
    box = Box(build_image()).start()
    try:
        box.siteops("bootstrap")
        commit(box, "/srv/repos/app", APP, "app")
        start = time.monotonic()
        names = [f"s{i:02d}" for i in range(args.sites)]
        adds = []
        sleep = f" --sleep-after {args.sleep_after}" if args.sleep_after else ""
        for name in names:
            t0 = time.monotonic()
            box.siteops(f"add-site {name} --domain {name}.test --components frontend{sleep}")
            adds.append(time.monotonic() - t0)
            box.siteops(f"deploy {name} --repo /srv/repos/app")
        print(f"provisioned and deployed {args.sites} sites in {time.monotonic() - start:.0f} s; "
              f"add-site (no TLS) mean {statistics.mean(adds):.2f} s, median "
              f"{statistics.median(adds):.2f} s, first {adds[0]:.2f} s, last {adds[-1]:.2f} s")
        print(f"{'sites':>6} {'audit s':>9} {'s/site':>8} {'--json s':>9} {'s/site':>8}")
        for n in sorted({10, 25, args.sites} & set(range(1, args.sites + 1))):
            subset = " ".join(names[:n])
            text = timed(box, f"audit {subset}", args.repeat)
            js = timed(box, f"audit --json {subset}", args.repeat)
            print(f"{n:>6} {text:>9.2f} {text / n:>8.3f} {js:>9.2f} {js / n:>8.3f}")
        if args.profile:
            profile(box)
    finally:
        box.stop()


if __name__ == "__main__":
    main()
