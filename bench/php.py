#!/usr/bin/env python3
"""Benchmark: a PHP site beside a Flask site, one box, one run.

Boots the Debian 12 box, bootstraps it and adds two sites: `pyapp` (Flask
under gunicorn, 2 workers, from a local wheel directory: the box has no
network) and `phpapp` (a PHP app with a composer.json, its own PHP-FPM).
Each gets, in turn:

- first deploy and redeploy time (requirements / composer.lock unchanged:
  the venv or vendor/ copied from the live release), median of --rounds;
- request latency p50/p99 at --rate requests/s, no deploy running;
- failed requests during --redeploys redeploys under that load;
- the idle site's memory: PSS of its web instance's processes (gunicorn's
  master and workers; the FPM master, whose ondemand workers have gone
  after 10 s idle) and of its Redis.

Needs root (systemd-nspawn). Run: sudo python3 bench/php.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))
sys.path.insert(0, str(REPO / "bench"))

from machine import Box, Load, build_image, commit  # noqa: E402
from peers import PSS, latency, print_table, stopped  # noqa: E402  the same measures as beside piku
from redeploy import APP as FLASK, local_wheels  # noqa: E402

PHP = """\
<?php
require __DIR__ . '/../vendor/autoload.php';
echo "php {n}\\n";
"""
SITES = {
    "pyapp": {"app.py": FLASK.format(n=0),
              "requirements.txt": "--no-index\n--find-links /srv/wheels\nflask\ngunicorn\n",
              "siteops.toml": 'runtime = "python"\n[frontend]\n'
                              'start = "gunicorn -b 127.0.0.1:${PORT} -w 2 app:app"\n'},
    "phpapp": {"public/index.php": PHP.format(n=0),
               "composer.json": json.dumps({"name": "bench/php", "require": {}}),
               "siteops.toml": 'runtime = "php"\n'},
}


def change(site: str, n: int) -> dict[str, str]:
    return {"app.py": FLASK.format(n=n)} if site == "pyapp" else {
        "public/index.php": PHP.format(n=n)}


def deployed(box: Box, site: str) -> float:
    t0 = time.monotonic()
    box.siteops(f"deploy {site}")
    return time.monotonic() - t0


def memory_mb(box: Box, site: str) -> tuple[float, float]:
    """PSS in MB of the site's web instance and of its Redis."""
    box.sh("cat > /root/pss.py", input=PSS)
    procs = json.loads(box.sh("python3 /root/pss.py").stdout).values()
    web = sum(kb for unit, kb in procs if unit.startswith(f"{site}-frontend@")) / 1024
    redis = sum(kb for unit, kb in procs if unit == f"{site}-redis.service") / 1024
    return web, redis


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="redeploys timed per site (median)")
    p.add_argument("--redeploys", type=int, default=10, help="redeploys under load per site")
    p.add_argument("--rate", type=int, default=100, help="requests per second of the load")
    args = p.parse_args()
    wheels = local_wheels()
    box = Box(build_image("bookworm"), binds={str(wheels): "/srv/wheels"})
    box.start()
    rows: dict[str, dict] = {site: {} for site in SITES}
    try:
        box.siteops("bootstrap")
        for site, files in SITES.items():
            box.siteops(f"add-site {site} --domain {site}.test --components frontend")
            commit(box, f"/srv/repos/{site}", files, "v0")
            t0 = time.monotonic()
            box.siteops(f"deploy {site} --repo /srv/repos/{site}")
            rows[site]["first deploy, s"] = time.monotonic() - t0
        n = 0
        for site in SITES:
            times = []
            for _ in range(args.rounds):
                n += 1
                commit(box, f"/srv/repos/{site}", change(site, n), f"v{n}")
                times.append(deployed(box, site))
            rows[site]["redeploy, dependencies unchanged, median s"] = statistics.median(times)
        for site in SITES:
            time.sleep(2)
            Load(box, f"{site}.test", rate=args.rate)
            time.sleep(20)
            samples = stopped(box)
            bad = sum(1 for s in samples if s[2] != 200)
            rows[site][f"latency p50 / p99 at {args.rate} r/s, ms"] = "%.1f / %.1f" % latency(
                samples) + (f" ({bad} of {len(samples)} not 200)" if bad else "")
        for site in SITES:
            Load(box, f"{site}.test", rate=args.rate)
            loaded = []
            for _ in range(args.redeploys):
                n += 1
                commit(box, f"/srv/repos/{site}", change(site, n), f"v{n}")
                loaded.append(deployed(box, site))
                time.sleep(1)
            samples = stopped(box)
            failed = Counter(s[2] or "no answer" for s in samples if s[2] != 200)
            rows[site][f"failed requests, {args.redeploys} redeploys under that load"] = \
                f"{sum(failed.values())} of {len(samples)}"
            rows[site]["redeploy under load, median s"] = statistics.median(loaded)
        time.sleep(15)  # the FPM's ondemand workers go after 10 s idle
        for site in SITES:
            web, redis = memory_mb(box, site)
            rows[site]["idle memory (PSS), MB: web instance + Redis"] = \
                f"{web:.1f} + {redis:.1f}"
    finally:
        box.stop()
        shutil.rmtree(wheels, ignore_errors=True)
    print(f"\nA PHP site beside a Flask site, one Debian 12 box, {time.strftime('%Y-%m-%d')}\n")
    print_table(rows, {"pyapp": "Flask (gunicorn, 2 workers)",
                       "phpapp": "PHP (its own PHP-FPM, ondemand)"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
