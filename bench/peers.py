#!/usr/bin/env python3
"""Benchmark: siteops beside piku, the same Flask app on the same box, one run.

piku (github.com/piku/piku: one piku.py, uWSGI from Debian's packages, `git
push` deploys) is the peer that runs on the same kind of host without
containers. Both stacks get the same Flask app (installed from a local wheel
directory: the box has no network), the same nginx, and deploys by `git push`
over SSH from a tenant key in the box. siteops serves it with gunicorn (2
workers) behind its health-gated switch; piku with a uWSGI vassal (its
defaults: 2 processes, 4 threads) on a unix socket, as piku does for a `wsgi`
Procfile entry with NGINX_SERVER_NAME set.

Figures, each stack in turn on the same box:
- first deploy: `git push` to the new app serving (polled with curl), seconds;
- redeploy, requirements unchanged: median of --rounds, push to serving;
- failed requests during --redeploys redeploys under --rate requests/s;
- rollback to the previous release, command to serving (piku has none);
- memory (PSS) of the idle deployed site's own processes, and how many such
  sites fit in 4 GB by that figure alone;
- request latency p50/p99 at --rate requests/s, idle (no deploy running);
- then each stack's idle setting (siteops `limits --sleep-after 10s`, piku
  `UWSGI_IDLE=10` in the app's ENV): the memory of the idle site once idle,
  and its first request after idle (median of --wakes), seconds.

Needs root (systemd-nspawn) and a checkout of piku: --piku DIR (piku.py and
its uwsgi-piku.service, piku-nginx.path and piku-nginx.service are used from
it). The box image with piku's packages (uwsgi-core, uwsgi-plugin-python3,
python3-click, python3-virtualenv) is derived once from the Debian 12 box
image and cached beside it.

Run: sudo python3 bench/peers.py --piku ~/src/piku
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
from collections import Counter
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))

from machine import SRC, Box, Load, build_image, commit  # noqa: E402
from redeploy import APP  # noqa: E402  the same Flask app (bench/ is this script's path)

APP_REPO = "/srv/repos/app"
PACKAGES = "uwsgi-core uwsgi-plugin-python3 python3-click python3-virtualenv"
FILES = {
    "requirements.txt": "--no-index\n--find-links /srv/wheels\nflask\ngunicorn\n",
    # siteops: gunicorn, two workers
    "siteops.toml": 'runtime = "python"\n[frontend]\n'
                    'start = "gunicorn -b 127.0.0.1:${PORT} -w 2 app:app"\n',
    # piku: a uWSGI vassal behind nginx on a unix socket
    "Procfile": "wsgi: app:app\n",
    "ENV": "NGINX_SERVER_NAME=piku.test\n",
}
STACKS = {"siteops": ("deploy@127.0.0.1:app", "app.test"),
          "piku": ("piku@127.0.0.1:app", "piku.test")}

PIKU_SETUP = """\
set -e
useradd -m -g www-data -s /bin/bash piku
chmod 750 /home/piku
install -o piku -g www-data -m 755 /srv/piku/piku.py /home/piku/piku.py
runuser -l piku -c 'python3 ~/piku.py setup' >/dev/null
ln -sf "$(command -v uwsgi || command -v uwsgi-core)" /usr/local/bin/uwsgi-piku
cp /srv/piku/uwsgi-piku.service /srv/piku/piku-nginx.path /srv/piku/piku-nginx.service \
    /etc/systemd/system/
echo 'include /home/piku/.piku/nginx/*.conf;' > /etc/nginx/conf.d/piku.conf
systemctl daemon-reload
systemctl enable -q --now uwsgi-piku.service piku-nginx.path
install -m 644 /root/.ssh/tenant.pub /tmp/tenant.pub
runuser -l piku -c 'python3 ~/piku.py setup:ssh /tmp/tenant.pub' >/dev/null
"""

# Push to a stack and time it until the new body is served (inside the box,
# so that no host-side overhead is counted). Prints the seconds.
PUSH = """\
set -e
cd {repo}
t0=$(date +%s.%N)
git push -q -f {remote} HEAD:main >/tmp/push.log 2>&1 || {{ cat /tmp/push.log >&2; exit 1; }}
until curl -sf -H 'Host: {name}' http://127.0.0.1/ 2>/dev/null | grep -qx '{body}'; do
    sleep 0.02
    [ "$(echo "$(date +%s.%N) - $t0 > 300" | bc)" = 0 ] || {{ echo 'never served' >&2; exit 1; }}
done
echo "$(date +%s.%N) - $t0" | bc
"""


def peers_image(base: Path) -> Path:
    """The Debian 12 box image with piku's packages, derived once and cached."""
    image = base.with_name(base.name + "-piku")
    if image.is_dir():
        return image
    tmp = Path(tempfile.mkdtemp(prefix=".piku-", dir=base.parent))
    try:
        subprocess.run(["cp", "-a", f"{base}/.", str(tmp)], check=True)
        shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
        policy = tmp / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        subprocess.run(["mount", "-t", "proc", "proc", str(tmp / "proc")], check=True)
        try:
            subprocess.run(["chroot", str(tmp), "sh", "-c",
                            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get "
                            f"install -y -qq --no-install-recommends {PACKAGES} bc >/dev/null "
                            "&& apt-get clean"], check=True)
        finally:
            subprocess.run(["umount", str(tmp / "proc")], check=True)
        policy.unlink()
        tmp.rename(image)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return image


def push(box: Box, stack: str, n: int) -> float:
    remote, name = STACKS[stack]
    res = box.sh(PUSH.format(repo=APP_REPO, remote=remote, name=name, body=f"flask {n}"))
    return float(res.stdout)


def switched_within(box: Box, name: str, command: str) -> float:
    """Run command, then poll until the body served changes: the seconds it took."""
    res = box.sh(f"before=$(curl -sf -H 'Host: {name}' http://127.0.0.1/); t0=$(date +%s.%N); "
                 f"{command} >/dev/null; until body=$(curl -sf -H 'Host: {name}' "
                 "http://127.0.0.1/) && [ -n \"$body\" ] && [ \"$body\" != \"$before\" ]; "
                 "do sleep 0.02; done; echo \"$(date +%s.%N) - $t0\" | bc")
    return float(res.stdout)


PSS = """\
import json, pathlib
out = {}
for proc in pathlib.Path("/proc").iterdir():
    try:
        unit = (proc / "cgroup").read_text().strip().rsplit("/", 1)[-1]
        rollup = (proc / "smaps_rollup").read_text().splitlines()
    except (OSError, NotADirectoryError):
        continue
    kb = next((int(l.split()[1]) for l in rollup if l.startswith("Pss:")), 0)
    out[proc.name] = [unit, kb]
print(json.dumps(out))
"""


def memory(box: Box) -> dict[str, float]:
    """PSS in MB of the idle sites' processes, by the units they run in."""
    box.sh("cat > /root/pss.py", input=PSS)
    procs = json.loads(box.sh("python3 /root/pss.py").stdout)
    emperor = box.sh("systemctl show -p MainPID --value uwsgi-piku").stdout.strip()

    def mb(match) -> float:
        return sum(kb for pid, (unit, kb) in procs.items() if match(pid, unit)) / 1024
    return {"siteops app": mb(lambda _, unit: unit.startswith("app-frontend@")),
            "siteops Redis": mb(lambda _, unit: unit == "app-redis.service"),
            "piku app": mb(lambda pid, unit: unit == "uwsgi-piku.service" and pid != emperor),
            "piku emperor": mb(lambda pid, _: pid == emperor)}


def stopped(box: Box) -> list:
    """Stop the load and return its samples, however it went (Load.stop insists
    on a load that was still sending when stopped; here a stack that stops
    answering is a figure, not an error of the bench)."""
    box.sh("touch /tmp/load.stop; for i in $(seq 300); do test -s /tmp/load.json && break; "
           "sleep 0.1; done")
    return json.loads(box.sh("cat /tmp/load.json").stdout)


def idle(box: Box, rows: dict[str, dict], n: int, wakes: int) -> None:
    """Both stacks with their idle setting: siteops's site sleeps after 10 s
    (no process at all), piku's uWSGI vassal is cheap and dies on idle after
    10 s (UWSGI_IDLE: its master starts again, without workers, until a
    request). The idle site's memory, and the first request after idle."""
    box.siteops("limits app --sleep-after 10s")
    commit(box, APP_REPO, {"app.py": APP.format(n=n), "ENV": FILES["ENV"] + "UWSGI_IDLE=10\n"},
           f"v{n}")
    for stack in STACKS:
        push(box, stack, n)
    first: dict[str, list[float]] = {stack: [] for stack in STACKS}
    for _ in range(wakes):
        time.sleep(30)  # idle past 10 s (and nginx's 5 s keepalive to siteops's door)
        mem = memory(box)
        for stack, (_, name) in STACKS.items():
            res = box.sh(f"curl -sS -o /dev/null -w '%{{http_code}} %{{time_total}}' "
                         f"-H 'Host: {name}' http://127.0.0.1/")
            code, took = res.stdout.split()
            first[stack].append(float(took) if code == "200" else float("inf"))
    for stack in STACKS:
        site = mem[f"{stack} app"] + mem.get(f"{stack} Redis", 0)
        rows[stack]["idle setting"] = {"siteops": "--sleep-after 10s",
                                       "piku": "UWSGI_IDLE=10"}[stack]
        rows[stack]["memory once idle (PSS), MB"] = round(site, 1)
        rows[stack]["first request after idle, median s"] = statistics.median(first[stack])
        rows[stack]["idle sites in 4 GB by that figure"] = (
            int(4096 // site) if site >= 0.1 else
            "no process: the host's own cost per site decides (bench/density.py)")


def latency(samples: list) -> tuple[float, float]:
    lat = sorted(s[1] for s in samples)
    return 1000 * lat[len(lat) // 2], 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--piku", type=Path, required=True, help="a checkout of github.com/piku/piku")
    p.add_argument("--rounds", type=int, default=5, help="redeploys timed per stack (median)")
    p.add_argument("--redeploys", type=int, default=10, help="redeploys under load per stack")
    p.add_argument("--rate", type=int, default=100, help="requests per second of the load")
    p.add_argument("--wakes", type=int, default=3, help="first requests after idle per stack")
    args = p.parse_args()
    piku_py = args.piku / "piku.py"
    if not piku_py.is_file():
        p.error(f"{piku_py} is missing: --piku is a checkout of github.com/piku/piku")
    wheels = Path(tempfile.mkdtemp(prefix="siteops-wheels-"))
    wheels.chmod(0o755)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
                    "--only-binary=:all:", "--python-version", "3.11", "flask", "gunicorn"],
                   check=True)
    image = peers_image(build_image("bookworm"))
    box = Box(image, binds={str(wheels): "/srv/wheels", str(args.piku.resolve()): "/srv/piku"})
    box.start()
    rows: dict[str, dict] = {"siteops": {}, "piku": {}}
    try:
        box.siteops("bootstrap")
        box.siteops("add-site app --domain app.test --components frontend")
        box.sh("ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/tenant")
        box.siteops("access app add /root/.ssh/tenant.pub")
        box.sh(PIKU_SETUP)
        box.sh("printf 'Host 127.0.0.1\\n  IdentityFile /root/.ssh/tenant\\n"
               "  StrictHostKeyChecking no\\n  IdentitiesOnly yes\\n' >> /root/.ssh/config")
        commit(box, APP_REPO, {"app.py": APP.format(n=0), **FILES}, "v0")
        n = 0
        for stack in STACKS:
            rows[stack]["first deploy, s"] = push(box, stack, n)
        times: dict[str, list[float]] = {stack: [] for stack in STACKS}
        for _ in range(args.rounds):
            n += 1
            commit(box, APP_REPO, {"app.py": APP.format(n=n)}, f"v{n}")
            for stack in STACKS:
                times[stack].append(push(box, stack, n))
        for stack in STACKS:
            rows[stack]["redeploy, median s"] = statistics.median(times[stack])
        for stack, (_, name) in STACKS.items():
            time.sleep(2)
            Load(box, name, rate=args.rate)
            time.sleep(20)
            samples = stopped(box)
            bad = sum(1 for s in samples if s[2] != 200)
            rows[stack]["latency p50 / p99, ms"] = "%.1f / %.1f" % latency(samples) + (
                f" ({bad} of {len(samples)} not answered 200)" if bad else "")
        for stack, (_, name) in STACKS.items():
            Load(box, name, rate=args.rate)
            loaded = []
            for _ in range(args.redeploys):
                n += 1
                commit(box, APP_REPO, {"app.py": APP.format(n=n)}, f"v{n}")
                loaded.append(push(box, stack, n))
                time.sleep(1)
            samples = stopped(box)
            failed = Counter(s[2] or "no answer" for s in samples if s[2] != 200)
            rows[stack][f"failed requests, {args.redeploys} redeploys at {args.rate} r/s"] = \
                f"{sum(failed.values())} of {len(samples)}" + (
                    " (" + ", ".join(f"{n} x {code}" for code, n in failed.most_common()) + ")"
                    if failed else "")
            rows[stack]["redeploy under that load, median s"] = statistics.median(loaded)
        rollbacks = []
        for _ in range(3):  # a new release each time, then back to the one before
            n += 1
            commit(box, APP_REPO, {"app.py": APP.format(n=n)}, f"v{n}")
            push(box, "siteops", n)
            rollbacks.append(switched_within(box, "app.test", f"{SRC}/bin/rollback app"))
        rows["siteops"]["rollback, median s"] = statistics.median(rollbacks)
        rows["piku"]["rollback, median s"] = "none (redeploy an older commit)"
        time.sleep(5)
        mem = memory(box)
        for stack in STACKS:
            site = mem[f"{stack} app"] + mem.get(f"{stack} Redis", 0)
            rows[stack]["idle site memory (PSS), MB"] = round(site, 1)
            rows[stack]["idle sites in 4 GB"] = int(4096 // site)
        rows["siteops"]["idle site memory (PSS), MB"] = \
            f"{rows['siteops']['idle site memory (PSS), MB']} (app {mem['siteops app']:.1f} + " \
            f"its own Redis {mem['siteops Redis']:.1f})"
        rows["piku"]["idle site memory (PSS), MB"] = \
            f"{rows['piku']['idle site memory (PSS), MB']} (+ uWSGI emperor " \
            f"{mem['piku emperor']:.1f}, shared)"
        idle(box, rows, n + 1, args.wakes)
    except BaseException:
        print(f"figures so far: {rows}\n" + box.sh(
            "tail -5 /tmp/load.log /tmp/push.log; journalctl -n 30 --no-pager -u uwsgi-piku "
            "| grep -v 'syslog is obsolete'",
            check=False).stdout, file=sys.stderr)
        raise
    finally:
        box.stop()
        shutil.rmtree(wheels, ignore_errors=True)
    digest = hashlib.sha256(piku_py.read_bytes()).hexdigest()[:12]
    print(f"\nsiteops and piku (piku.py sha256 {digest}), one box, {time.strftime('%Y-%m-%d')}\n")
    print_table(rows, {"siteops": "siteops", "piku": "piku"})
    return 0


def print_table(rows: dict[str, dict], columns: dict[str, str]) -> None:
    """rows (column key: {figure: value}) as a Markdown table, a column per
    key of columns (key: heading), figures in the first column's order."""
    print("| figure | " + " | ".join(columns.values()) + " |")
    print("| --- |" + " --- |" * len(columns))
    for figure in rows[next(iter(columns))]:
        cells = [rows[key][figure] for key in columns]
        print(f"| {figure} | " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c)
                                            for c in cells) + " |")

if __name__ == "__main__":
    sys.exit(main())
