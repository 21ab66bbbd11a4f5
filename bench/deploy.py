#!/usr/bin/env python3
"""Benchmark: deploys and rollbacks under steady load, beside the reference's
procedure (`ln -sfn` + `systemctl restart`) on the same app, in one run.

Boots the box (tests/box), bootstraps it, adds site `bench`, then keeps
--rate requests/s flowing through nginx (bench/load.py) while it runs
--rounds deploys and --rounds rollbacks (deploy, rollback, deploy, ...), the
same again with `deploy --keep-warm` (each rollback onto running instances), and
then --rounds reference deploys of the same app on a second site served by
a plain unit restarted in place. Prints failed requests, p50/p99 latency
during the switches and seconds from command start until the new release
serves. Needs root (systemd-nspawn). Run: sudo python3 bench/deploy.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))

from machine import SRC, Box, build_image, commit  # noqa: E402
from test_deploy import NODE_FILES  # noqa: E402

APP_REPO = "/srv/repos/bench"
REF = "/srv/ref"
REF_UNIT = """\
[Service]
User=bench
WorkingDirectory=/srv/ref/current
Environment=PORT=3199 HOST=127.0.0.1
ExecStart=/usr/bin/node server.js
Restart=always
"""
REF_NGINX = """\
server {
    listen 80;
    server_name ref.test;
    location / { proxy_pass http://127.0.0.1:3199; }
}
"""


def now(box: Box) -> float:
    return float(box.sh("date +%s.%N").stdout)


def start_load(box: Box, host: str, rate: float) -> None:
    box.sh("rm -f /tmp/load.stop /tmp/load.json")
    box.sh(f"setsid python3 {SRC}/bench/load.py --host {host} --rate {rate} --workers 8 "
           "--duration 3000 --out /tmp/load.json >/tmp/load.log 2>&1 &")
    time.sleep(2)


def stop_load(box: Box) -> list:
    time.sleep(2)
    box.sh("touch /tmp/load.stop; for i in $(seq 300); do test -s /tmp/load.json && break; "
           "sleep 0.1; done")
    return json.loads(box.sh("cat /tmp/load.json").stdout)


def serving_at(samples: list, since: float, marker: str) -> float | None:
    """Seconds from since until the first good response containing marker."""
    for t, _, status, head, _ in samples:
        if t >= since and status == 200 and f" {marker} " in head:
            return t - since
    return None


def summary(name: str, samples: list, windows: list[tuple[float, float, str]]) -> dict:
    during = [s for s in samples if any(a <= s[0] <= b + 1 for a, b, _ in windows)]
    lat = sorted(s[1] for s in during) or [0.0]
    to_serve = [serving_at(samples, a, m) for a, _, m in windows]
    return {
        "name": name,
        "requests": len(samples),
        "rate": len(samples) / (samples[-1][0] - samples[0][0]) if len(samples) > 1 else 0,
        "failed": sum(1 for s in samples if s[2] != 200),
        "failed_during_switches": sum(1 for s in during if s[2] != 200),
        "retried": sum(1 for s in samples if s[4]),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "to_serve_s": [round(x, 2) for x in to_serve if x is not None],
        "never_served": sum(1 for x in to_serve if x is None),
        "command_s": [round(b - a, 2) for a, b, _ in windows],
    }


def siteops_rounds(box: Box, rounds: int, rate: float, warm: bool = False,
                   first: int = 1) -> tuple[dict, dict]:
    """Deploy, rollback, deploy again, rounds times; with warm each deploy
    keeps the release it replaces running (--keep-warm), so each rollback
    switches onto running instances."""
    flag = " --keep-warm" if warm else ""
    start_load(box, "bench.test", rate)
    deploys, rollbacks = [], []
    for i in range(first, first + rounds):
        version = f"d{i}"
        commit(box, APP_REPO, {"VERSION": version + "\n"}, version)
        a = now(box)
        box.siteops(f"deploy bench{flag}")
        deploys.append((a, now(box), version))
        previous = f"d{i - 1}" if i > 1 else "d0"
        a = now(box)
        box.siteops("rollback bench")
        rollbacks.append((a, now(box), previous))
        box.siteops(f"deploy bench{flag}")  # back to d{i} so the next rollback has a target
    samples = stop_load(box)
    return (summary(f"siteops deploy{flag}", samples, deploys),
            summary("siteops rollback" + (" (warm)" if warm else ""), samples, rollbacks))


def reference_rounds(box: Box, rounds: int, rate: float) -> dict:
    """The reference procedure: export, `ln -sfn`, `systemctl restart`."""
    box.sh(f"install -d {REF}/releases && cat > /etc/systemd/system/ref.service",
           input=REF_UNIT)
    box.sh("cat > /etc/nginx/sites-enabled/ref.conf && nginx -t -q && systemctl reload nginx",
           input=REF_NGINX)

    def release(version: str) -> None:
        d = f"{REF}/releases/{version}"
        box.sh(f"mkdir -p {d} && git -C {APP_REPO} archive HEAD | tar -x -C {d} && "
               f"cd {d} && node build.js >/dev/null && chown -R bench: {d}")
        box.sh(f"ln -sfn {d} {REF}/current && systemctl daemon-reload && systemctl restart ref")

    commit(box, APP_REPO, {"VERSION": "r0\n"}, "r0")
    release("r0")
    time.sleep(1)
    start_load(box, "ref.test", rate)
    windows = []
    for i in range(1, rounds + 1):
        version = f"r{i}"
        commit(box, APP_REPO, {"VERSION": version + "\n"}, version)
        a = now(box)
        release(version)
        windows.append((a, now(box), version))
        time.sleep(1)
    return summary("reference ln -sfn + restart", stop_load(box), windows)


def table(rows: list[dict]) -> str:
    fields = [("requests", "requests sent", "{:d}"), ("rate", "requests/s", "{:.0f}"),
              ("failed", "failed requests", "{:d}"),
              ("failed_during_switches", "  of them during switches", "{:d}"),
              ("retried", "keep-alive retries", "{:d}"),
              ("p50_ms", "p50 latency in switches (ms)", "{:.1f}"),
              ("p99_ms", "p99 latency in switches (ms)", "{:.1f}")]
    out = [f"{'':34}" + "".join(f"{r['name']:>30}" for r in rows)]
    for key, label, fmt in fields:
        out.append(f"{label:34}" + "".join(f"{fmt.format(r[key]):>30}" for r in rows))
    for key, label in (("to_serve_s", "s to new release serving"), ("command_s", "s per command")):
        cells = [f"median {statistics.median(r[key]):.2f} max {max(r[key]):.2f}" if r[key] else "-"
                 for r in rows]
        out.append(f"{label:34}" + "".join(f"{c:>30}" for c in cells))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--rate", type=float, default=120, help="requests/s (default 120)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()
    box = Box(build_image()).start()
    try:
        box.siteops("bootstrap")
        box.siteops("add-site bench --domain bench.test --components frontend")
        commit(box, APP_REPO, dict(NODE_FILES, VERSION="d0\n"), "d0")
        box.siteops(f"deploy bench --repo {APP_REPO}")
        deploy_row, rollback_row = siteops_rounds(box, args.rounds, args.rate)
        warm_rows = siteops_rounds(box, args.rounds, args.rate, warm=True,
                                   first=args.rounds + 1)
        ref_row = reference_rounds(box, args.rounds, args.rate)
    finally:
        box.stop()
    rows = [deploy_row, rollback_row, *warm_rows, ref_row]
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
