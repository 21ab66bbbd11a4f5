#!/usr/bin/env python3
"""Benchmark: how long a Python app takes to deploy when its requirements did
not change (the venv copied from the live release) beside the same deploy
when they did (a fresh venv and pip install), alternating in one run.

The app is Flask served by gunicorn, installed from a local wheel directory
(pip download on this machine, for Debian 12's Python 3.11; the box has no
network), so the install is the fastest it can be: from a real index it is
slower. Boots the Debian 12 box, bootstraps it, adds site `flask`, deploys
once, then --rounds times changes only app.py (reuse) and --rounds times
changes requirements.txt too (fresh install). Prints each median and the
first deploy; with --trace, where one redeploy's and two rollbacks' time
goes. Needs root (systemd-nspawn). Run: sudo python3 bench/redeploy.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests/box"))

from machine import SRC, Box, build_image, commit  # noqa: E402

APP_REPO = "/srv/repos/flask"
APP = """\
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return "flask {n}\\n"
"""


def local_wheels() -> Path:
    """Flask's and gunicorn's wheels in a directory the box binds at
    /srv/wheels (the box has no network; the site users install from it)."""
    wheels = Path(tempfile.mkdtemp(prefix="siteops-wheels-"))
    wheels.chmod(0o755)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels),
                    "--only-binary=:all:", "--python-version", "3.11", "flask", "gunicorn"],
                   check=True)
    return wheels


def deploy(box: Box) -> tuple[float, str]:
    t0 = time.monotonic()
    out = box.siteops("deploy flask").stdout
    return time.monotonic() - t0, out


def traced(box: Box, title: str, command: str) -> None:
    """One command run with --trace: its steps, each with the seconds it took,
    and its total."""
    res = box.sh(f"{SRC}/bin/{command} --trace 2>&1 >/dev/null")
    steps = [line.split(None, 3) for line in res.stdout.splitlines()
             if "  step " in line or "/bin/sh -c " in line]  # and the build steps
    print(f"{title} (`{command}`), traced:")
    for at, took, _, label in steps:
        shown = label if "/bin/sh -c " not in label else "build: " + label.split("/bin/sh -c ")[-1]
        print(f"  {float(took):6.3f} s  {shown[:110]}")
    print(f"  {float(steps[-1][0]):6.3f} s  in all, from the command's start to its last step")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--trace", action="store_true",
                   help="then one more redeploy, a rollback and a rollback onto instances "
                        "kept warm, each traced step by step (--trace)")
    args = p.parse_args()
    box = Box(build_image("bookworm"), binds={str(local_wheels()): "/srv/wheels"}).start()
    try:
        box.siteops("bootstrap")
        box.siteops("add-site flask --domain flask.test --components frontend")
        requirements = "--no-index\n--find-links /srv/wheels\nflask\ngunicorn\n"
        commit(box, APP_REPO, {
            "app.py": APP.format(n=0), "requirements.txt": requirements,
            "siteops.toml": 'runtime = "python"\n[frontend]\n'
                            'start = "gunicorn -b 127.0.0.1:${PORT} -w 2 app:app"\n'}, "v0")
        t0 = time.monotonic()
        box.siteops(f"deploy flask --repo {APP_REPO}")
        first = time.monotonic() - t0
        reuse, fresh = [], []
        for n in range(1, args.rounds + 1):
            commit(box, APP_REPO, {"app.py": APP.format(n=n)}, f"app {n}")
            seconds, out = deploy(box)
            assert "==> reuse" in out, out
            reuse.append(seconds)
            commit(box, APP_REPO, {"requirements.txt": requirements + f"# {n}\n"}, f"req {n}")
            seconds, out = deploy(box)
            assert "==> install" in out and "==> reuse" not in out, out
            fresh.append(seconds)
        served = box.sh("curl -sS -H 'Host: flask.test' http://127.0.0.1/").stdout.strip()
        print(f"first deploy:                      {first:.1f} s")
        print(f"redeploy, requirements unchanged:  {statistics.median(reuse):.1f} s "
              f"(median of {len(reuse)}: {', '.join(f'{s:.1f}' for s in reuse)})")
        print(f"redeploy, requirements changed:    {statistics.median(fresh):.1f} s "
              f"(median of {len(fresh)}: {', '.join(f'{s:.1f}' for s in fresh)})")
        print(f"serving: {served}")
        if args.trace:
            commit(box, APP_REPO, {"app.py": APP.format(n=100)}, "app 100")
            traced(box, "redeploy, requirements unchanged", "deploy flask")
            traced(box, "rollback", "rollback flask")
            box.siteops("deploy flask --keep-warm")
            traced(box, "rollback onto instances kept warm", "rollback flask")
    finally:
        box.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
