#!/usr/bin/env python3
"""Benchmark: how many sleeping sites one host holds.

Boots the box (tests/box), bootstraps it, adds --sites sites that sleep
after 10 s and deploys the same small Flask app to each (gunicorn, 2 workers;
from a local wheel directory: the box has no network), then measures:

- the host's memory per sleeping site: MemAvailable with every site asleep,
  against the same box before the sites were added (and the memory of all
  the site slices together, from their cgroups);
- wake latency: the first request of a sleeping site answered, over
  --wakes random sites (p50, p99; each site asleep before its request);
- add-site mean over the N, and audit of all N;
- a wake storm: --storm sleeping sites requested at once, each answered
  within 10 s? (the slowest, and whether the host swapped).

Goals (issue: sleeping sites): at most 1 MB per sleeping site, wake p50 at
most 0.8 s and p99 at most 2 s, add-site mean at most 1.0 s, audit of 500
sites at most 3 s. Needs root; --sites 500 takes about an hour (the
deploys: a venv and Flask each, from the box's pip cache).
Run: sudo python3 bench/density.py --sites 50
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/box"))

from machine import SRC, Box, build_image, commit  # noqa: E402
from redeploy import local_wheels  # noqa: E402  (bench/ is this script's path)

APP = {
    "app.py": "from flask import Flask\napp = Flask(__name__)\n\n\n@app.get('/')\n"
              "def index():\n    return 'ok\\n'\n",
    "requirements.txt": "--no-index\n--find-links /srv/wheels\nflask\ngunicorn\n",
    "siteops.toml": 'runtime = "python"\n\n[frontend]\n'
                    'start = "gunicorn -w 2 -b 127.0.0.1:${PORT} app:app"\nhealth = "/"\n',
}
SLEEP = 10


def available_kb(box: Box) -> int:
    return int(box.sh("awk '/MemAvailable/ {print $2}' /proc/meminfo").stdout)


def processes_kb(box: Box) -> dict[str, int]:
    """The proportional memory (PSS, kB) of the processes in the box by
    program: nginx, PostgreSQL, systemd, journald, ... and the sites' own
    (none while they sleep)."""
    out = box.sh("for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null) && "
                 "awk -v c=\"$c\" '/^Pss:/ {print c, $2}' $p/smaps_rollup 2>/dev/null; done"
                 ).stdout
    by: dict[str, int] = {}
    for line in out.splitlines():
        name, _, kb = line.rpartition(" ")
        by[name] = by.get(name, 0) + int(kb)
    return by


def asleep(box: Box, names: list[str], timeout: float = 120) -> None:
    """Until no process of any of names runs."""
    users = ",".join(names)
    deadline = time.monotonic() + timeout
    while box.sh(f"ps -u {users} -o pid= | wc -l", check=False).stdout.strip() != "0":
        if time.monotonic() > deadline:
            raise SystemExit(f"sites still awake after {timeout} s")
        time.sleep(1)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=500)
    p.add_argument("--wakes", type=int, default=50)
    p.add_argument("--storm", type=int, default=50,
                   help="then wake this many sleeping sites at once (each within 10 s?)")
    p.add_argument("--keep", action="store_true",
                   help="keep the box running afterwards, to look into it (nsenter), until "
                        "Ctrl-C or SIGTERM")
    args = p.parse_args()
    box = Box(build_image("bookworm"), binds={str(local_wheels()): "/srv/wheels"}).start()
    try:
        box.siteops("bootstrap")
        commit(box, "/srv/repos/app", APP, "app")
        time.sleep(5)
        before, before_pss = available_kb(box), processes_kb(box)
        names = [f"s{i:03d}" for i in range(args.sites)]
        adds = []
        start = time.monotonic()
        for name in names:
            t0 = time.monotonic()
            box.siteops(f"add-site {name} --domain {name}.test --components frontend "
                        f"--sleep-after {SLEEP}s")
            adds.append(time.monotonic() - t0)
            box.siteops(f"deploy {name} --repo /srv/repos/app")
            if len(adds) % 50 == 0:
                print(f"  {len(adds)} sites, {time.monotonic() - start:.0f} s; add-site of the "
                      f"last 50: mean {statistics.mean(adds[-50:]):.2f} s", flush=True)
        print(f"added and deployed {args.sites} sleeping sites in "
              f"{time.monotonic() - start:.0f} s; add-site mean {statistics.mean(adds):.2f} s, "
              f"median {statistics.median(adds):.2f} s")
        print("  add-site mean by hundred sites: " + ", ".join(
            f"{i + 1}-{min(i + 100, len(adds))}: {statistics.mean(adds[i:i + 100]):.2f} s"
            for i in range(0, len(adds), 100)))
        asleep(box, names)
        time.sleep(5)
        after, after_pss = available_kb(box), processes_kb(box)
        slices = box.sh("systemctl show -p MemoryCurrent --value siteops.slice",
                        check=False).stdout.strip() or "?"
        grown = sum(after_pss.values()) - sum(before_pss.values())
        print(f"memory per sleeping site: {grown / args.sites:.0f} kB of process memory (PSS "
              f"of every process in the box: {sum(before_pss.values()) // 1024} MB before, "
              f"{sum(after_pss.values()) // 1024} MB with {args.sites} sites asleep; the "
              f"sites' slices: {slices} bytes); MemAvailable (the machine's, noisy): "
              f"{(before - after) / args.sites:.0f} kB per site")
        deltas = sorted(((after_pss.get(k, 0) - before_pss.get(k, 0), k)
                         for k in set(after_pss) | set(before_pss)), reverse=True)
        print("  of which, per site: " + ", ".join(f"{k} {d / args.sites:.0f} kB"
                                                   for d, k in deltas[:8] if d > 0))
        audits = []
        for _ in range(5):  # the first reads what the others remember (password checks)
            t0 = time.monotonic()
            box.sh(f"{SRC}/bin/audit >/dev/null", check=False)
            audits.append(time.monotonic() - t0)
        print(f"audit of {args.sites} sites: median {statistics.median(audits):.2f} s of five "
              f"({', '.join(f'{a:.2f}' for a in audits)})")
        latencies = []
        for name in random.sample(names, min(args.wakes, len(names))):
            took = box.sh(f"curl -sS -o /dev/null -w '%{{http_code}} %{{time_total}}' "
                          f"-H 'Host: {name}.test' http://127.0.0.1/").stdout.split()
            if took[0] != "200":
                raise SystemExit(f"{name} answered {took[0]} on wake")
            latencies.append(float(took[1]))
        print(f"wake (first request of a sleeping site answered), {len(latencies)} sites: "
              f"p50 {statistics.median(latencies):.2f} s, p99 {pct(latencies, 99):.2f} s, "
              f"max {max(latencies):.2f} s")
        storm = names[:args.storm]
        asleep(box, storm)
        swap = box.sh("awk '/SwapFree/ {print $2}' /proc/meminfo").stdout.strip()
        out = box.sh("printf '%s\\n' " + " ".join(storm) + " | xargs -P 64 -I{} curl -sS -m 30 "
                     "-o /dev/null -w '%{http_code} %{time_total}\\n' -H 'Host: {}.test' "
                     "http://127.0.0.1/", check=False).stdout.split("\n")
        answers = [line.split() for line in out if line.strip()]
        slow = [float(t) for _, t in answers]
        bad = [c for c, _ in answers if c != "200"]
        swap_after = box.sh("awk '/SwapFree/ {print $2}' /proc/meminfo").stdout.strip()
        print(f"wake storm: {len(storm)} sleeping sites requested at once: {len(bad)} not 200, "
              f"slowest {max(slow):.2f} s, p50 {statistics.median(slow):.2f} s; SwapFree "
              f"{swap} kB before, {swap_after} kB after")
        if args.keep:
            print(f"box kept: nsenter -t {box.leader} -a bash; Ctrl-C or SIGTERM stops it",
                  flush=True)
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while True:
                time.sleep(3600)
    finally:
        box.stop()


if __name__ == "__main__":
    main()
