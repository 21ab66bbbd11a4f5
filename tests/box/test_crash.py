"""Killed or interrupted at any moment, every command leaves the sites serving
and the next run converges. Each command that changes a site is sent
SIGKILL, SIGINT (Ctrl-C) or SIGTERM right after each of its steps in turn
(SITEOPS_KILL_AFTER_STEP, a test-only switch; machine.signals_for says which
signal after which step); deploy, rollback and config also just before each
change of the registry (between two steps, where a switch commits) and at
random moments to their process group (inside steps), while the site serves
a steady load; the command is then run again. Checked: no failed request, the end state an
uninterrupted run reaches, no lock left held, no secret regenerated, audit
without a critical finding."""

import json
import os
import subprocess
import time

import pytest

from machine import (SRC, Load, commit, killed_at, random_moments, registry, settled,
                     signals_for, site_state, states, step_count, stopped_at_moments,
                     stopped_before_changes, stopped_by)

REPO = "/srv/repos/app"
APP = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{open('VERSION').read().strip()} {os.environ.get('GREETING', '-')}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
KILLED = -9
# The random moments' seed (printed; SITEOPS_CRASH_SEED=N replays a run).
SEED = int(os.environ.get("SITEOPS_CRASH_SEED") or time.time())


SAMPLER = """\
import os, time
seen = set()
with open("/root/cmdlines.txt", "a") as out:
    while not os.path.exists("/root/cmdlines.stop"):
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    line = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ")
                except OSError:
                    continue
                if line and line not in seen:
                    seen.add(line)
                    out.write(line.decode(errors="replace") + "\\n")
                    out.flush()
        time.sleep(0.02)
"""

# Every secret siteops generated (the sites' .env values and URL passwords,
# the backup repository's password), then where each may and may not appear.
SWEEP = """\
import glob, grp, json, os, pwd, stat, subprocess, sys
sys.path.insert(0, "/opt/siteops-src/lib")
from siteops import envfile
secrets = {}
for env in glob.glob("/srv/sites/*/shared/.env"):
    site = env.split("/")[3]
    for value in envfile.secrets_of(open(env).read()):
        secrets[value] = site
for value in [open("/etc/siteops/restic-password").read().strip()]:
    secrets[value] = "root"
found = []
def check(where, text):
    for secret in secrets:
        if secret in text:
            found.append(where)
check("a process's command line", open("/root/cmdlines.txt").read())
for log in glob.glob("/var/log/siteops/*"):
    check(log, open(log, errors="replace").read())
check("the journal", subprocess.run(["journalctl", "-b", "--no-pager", "-o", "cat"],
                                    capture_output=True, text=True, errors="replace").stdout)
for top in ("/etc", "/srv", "/var/lib/siteops", "/var/log", "/tmp", "/home", "/root", "/var/backups"):
    for d, _, files in os.walk(top):
        for f in files:
            path = os.path.join(d, f)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > 2**20 or path == "/root/cmdlines.txt":
                    continue
                text = open(path, errors="replace").read()
            except OSError:
                continue
            for secret, site in secrets.items():
                if secret in text:
                    owner = pwd.getpwuid(st.st_uid).pw_name
                    group = grp.getgrgid(st.st_gid).gr_name
                    if st.st_mode & 0o004 or {owner, group} - {"root", site}:
                        found.append(f"{path} ({owner}:{group} {oct(st.st_mode & 0o777)})")
print(json.dumps({"secrets": len(secrets), "leaks": sorted(set(found))}))
"""


@pytest.fixture(scope="module")
def host(box):
    # Every command at every step takes about 8 minutes: on one suite, to keep
    # the whole CI run under 45 minutes (the switch code is the same on both).
    if "bookworm" not in str(box.image):
        pytest.skip("the crash harness runs on Debian 12 only (CI time)")
    box.sh("cat > /root/sampler.py", input=SAMPLER)
    box.sh("setsid python3 /root/sampler.py >/dev/null 2>&1 &")
    box.siteops("bootstrap")
    box.siteops("add-site app --domain app.test --components frontend")
    commit(box, REPO, {"app.py": APP, "VERSION": "v0\n",
                       "siteops.toml": 'health_timeout = 10\n[frontend]\nstart = "python3 app.py"\n'},
           "v0")
    box.siteops(f"deploy app --repo {REPO}")
    return box


def page(box, name="app") -> str:
    return box.sh(f"curl -sS -H 'Host: {name}.test' http://127.0.0.1/").stdout


def timed(host, command: str) -> tuple[subprocess.CompletedProcess, float]:
    """host.siteops(command) and how long it took."""
    t0 = time.monotonic()
    res = host.siteops(command)
    return res, time.monotonic() - t0


def test_deploy_killed_after_every_step_and_at_timed_moments(host):
    res, seconds = timed(host, "deploy app")
    n = step_count(res.stdout)
    assert n >= 8
    load = Load(host, "app.test")
    plan = signals_for(n)
    stops = 0
    for i, (k, signal) in enumerate(plan):
        commit(host, REPO, {"VERSION": f"k{i}\n"}, f"k{i}")
        res = killed_at(host, k, "deploy app", signal)
        stops += stopped_by(res, signal)
        host.siteops("deploy app")
        assert page(host).startswith(f"k{i} "), (k, signal)

    def again(label) -> None:
        host.siteops("deploy app")
        assert page(host).startswith(f"{version} "), label
    version = "c0"
    commit(host, REPO, {"VERSION": "c0\n"}, "c0")
    changes = stopped_before_changes(host, "deploy app", again)
    moments = random_moments(SEED, seconds, 8)
    for i, moment in enumerate(moments):
        version = f"t{i}"
        commit(host, REPO, {"VERSION": f"{version}\n"}, version)
        stopped_at_moments(host, "deploy app", [moment], again)
    samples, failed = load.failed()
    print(f"deploy: {n} steps, {stops} of {len(plan)} stops after a step "
          f"({', '.join(sorted({s for _, s in plan}))}), {changes} before a registry change, "
          f"{len(moments)} at random moments, {len(samples)} requests, {len(failed)} failed")
    assert stops == len(plan) and changes >= 3 and len(samples) > 200 and failed == [], failed[:5]
    settled(host, "app")


def rollbacks_killed(host, target: str, top: str, flags: str = "", then=lambda host: None) -> int:
    """`rollback app --to target` stopped after each of its steps in turn, run
    again, then back to top (then checked): returns its number of steps."""
    n = step_count(host.siteops(f"rollback app --to {target}{flags}").stdout)
    host.siteops(f"rollback app --to {top}{flags}")
    for k, signal in signals_for(n, 1):
        res = killed_at(host, k, f"rollback app --to {target}{flags}", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-2000:]
        again = host.siteops(f"rollback app --to {target}{flags}", check=False)
        assert again.returncode == 0 or "is already live" in again.stderr, again.stderr
        assert registry(host)["app"]["live"]["release"] == target
        host.siteops(f"rollback app --to {top}{flags}")
        then(host)
    return n


def test_rollback_killed_after_every_step(host):
    commit(host, REPO, {"VERSION": "r1\n"}, "r1")
    host.siteops("deploy app")
    target = registry(host)["app"]["live"]["release"]
    commit(host, REPO, {"VERSION": "r2\n"}, "r2")
    host.siteops("deploy app")
    top = registry(host)["app"]["live"]["release"]
    load = Load(host, "app.test")
    n = rollbacks_killed(host, target, top)
    _, seconds = timed(host, f"rollback app --to {target}")
    host.siteops(f"rollback app --to {top}")

    def again(label) -> None:  # run again: the target live; then back to the top
        res = host.siteops(f"rollback app --to {target}", check=False)
        assert res.returncode == 0 or "is already live" in res.stderr, (label, res.stderr)
        assert page(host).startswith("r1 "), label
        host.siteops(f"rollback app --to {top}")
    changes = stopped_before_changes(host, f"rollback app --to {target}", again)
    host.siteops(f"rollback app --to {top}")  # its last run had no stop: it ran to the end
    moments = random_moments(SEED, seconds, 6)
    stopped_at_moments(host, f"rollback app --to {target}", moments, again)
    samples, failed = load.failed()
    print(f"rollback: {n} steps, {changes} registry changes, {len(moments)} random moments, "
          f"{len(samples)} requests, {len(failed)} failed")
    assert changes >= 1 and len(samples) > 100 and failed == [], failed[:5]
    settled(host, "app")


def warm_kept(box) -> None:
    """The release before the live one runs at the other port, out of nginx."""
    site = registry(box)["app"]
    warm, live = site["warm"], site["live"]
    assert warm and warm["release"] != live["release"] and warm["offset"] != live["offset"], site
    port = site["ports"]["frontend"] + warm["offset"]
    assert states(box, f"app-frontend@{port}.service") == ["active"]
    assert f"127.0.0.1:{port}" not in box.sh("cat /etc/nginx/sites-available/app.conf").stdout


def test_keep_warm_deploy_and_rollback_killed_after_every_step(host):
    """deploy --keep-warm (which stops the instances kept warm before, then
    keeps the ones it replaces) and rollbacks onto warm instances, each
    stopped after every step: run again, the release is live and the one it
    replaced runs warm; no failed request."""
    commit(host, REPO, {"VERSION": "w0\n"}, "w0")
    host.siteops("deploy app --keep-warm")
    n = step_count(host.siteops("deploy app --keep-warm").stdout)  # with warm ones to stop
    load = Load(host, "app.test")
    plan = signals_for(n)
    for i, (k, signal) in enumerate(plan):
        commit(host, REPO, {"VERSION": f"w{i + 1}\n"}, f"w{i + 1}")
        res = killed_at(host, k, "deploy app --keep-warm", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-2000:]
        host.siteops("deploy app --keep-warm")
        assert page(host).startswith(f"w{i + 1} "), (k, signal)
        warm_kept(host)
    target = registry(host)["app"]["warm"]["release"]
    top = registry(host)["app"]["live"]["release"]
    m = rollbacks_killed(host, target, top, " --keep-warm", then=warm_kept)
    samples, failed = load.failed()
    print(f"keep-warm: deploy {n} steps, rollback {m} steps, {len(plan) + m} stops, "
          f"{len(samples)} requests, {len(failed)} failed")
    assert len(samples) > 100 and failed == [], failed[:5]
    host.siteops("deploy app")  # the warm ones stopped: the next tests start without them
    assert registry(host)["app"]["warm"] is None
    settled(host, "app")


def test_config_killed_after_every_step(host):
    n = step_count(host.siteops("config app set GREETING=warm").stdout)
    env_before = host.sh("grep -v GREETING /srv/sites/app/shared/.env").stdout
    load = Load(host, "app.test")
    for i, (k, signal) in enumerate(signals_for(n, 2)):
        res = killed_at(host, k, f"config app set GREETING=g{i}", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-2000:]
        host.siteops(f"config app set GREETING=g{i}")
        assert page(host).endswith(f" g{i}\n"), page(host)

    def again(label) -> None:
        host.siteops(f"config app set GREETING={greeting}")
        assert page(host).endswith(f" {greeting}\n"), (label, page(host))
    greeting = "c0"
    changes = stopped_before_changes(host, f"config app set GREETING={greeting}", again)
    _, seconds = timed(host, "config app set GREETING=timed")
    moments = random_moments(SEED, seconds, 6)
    for i, moment in enumerate(moments):
        greeting = f"t{i}"
        stopped_at_moments(host, f"config app set GREETING={greeting}", [moment], again)
    samples, failed = load.failed()
    print(f"config: {n} steps, {changes} registry changes, {len(moments)} random moments, "
          f"{len(samples)} requests, {len(failed)} failed")
    assert changes >= 1 and len(samples) > 50 and failed == [], failed[:5]
    # No secret regenerated, no other line touched.
    assert host.sh("grep -v GREETING /srv/sites/app/shared/.env").stdout == env_before
    settled(host, "app")


def test_limits_killed_after_every_step_converges(host):
    n = step_count(host.siteops("limits app --tasks-max 400").stdout)
    load = Load(host, "app.test")
    for i, (k, signal) in enumerate(signals_for(n, 1)):
        res = killed_at(host, k, f"limits app --tasks-max {401 + i}", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        host.siteops(f"limits app --tasks-max {401 + i}")
        assert registry(host)["app"]["limits"]["tasks_max"] == 401 + i
        assert host.sh("systemctl show -p TasksMax --value siteops-app.slice").stdout.strip() \
            == str(401 + i)
    samples, failed = load.failed()
    print(f"limits: {n} steps, {len(samples)} requests, {len(failed)} failed")
    assert len(samples) > 20 and failed == [], failed[:5]
    settled(host, "app")


def test_access_killed_after_every_step_converges(host):
    host.sh("rm -f /root/ck /root/ck.pub && ssh-keygen -q -t ed25519 -N '' -f /root/ck")
    fp = host.sh("ssh-keygen -l -f /root/ck.pub").stdout.split()[1]
    n = step_count(host.siteops("access app add /root/ck.pub").stdout)
    host.siteops(f"access app remove {fp}")
    assert n >= 2
    keys = lambda: host.sh("cat /etc/ssh/siteops-keys/deploy").stdout  # noqa: E731

    def clean(action: str, k: int) -> None:
        doc = json.loads(host.siteops("audit app --json", check=False).stdout)
        bad = [f for f in doc["findings"] if f["severity"] != "ok" and (
            f["id"].startswith("host.ssh.") or f["id"] == "site.app.access")]
        assert bad == [], (action, k, bad)
    for k, signal in signals_for(n):
        res = killed_at(host, k, "access app add /root/ck.pub", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        host.siteops("access app add /root/ck.pub")
        assert fp in keys() and [e["fingerprint"] for e in registry(host)["app"]["keys"]] == [fp]
        clean("add", k)
        res = killed_at(host, k, f"access app remove {fp}", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        again = host.siteops(f"access app remove {fp}", check=False)
        assert again.returncode == 0 or "has no key" in again.stderr, again
        assert fp not in keys() and registry(host)["app"]["keys"] == []
        clean("remove", k)
    print(f"access: {n} steps, add and remove each interrupted and run again, audit clean")


def test_add_site_killed_after_every_step_converges(host):
    n = step_count(host.siteops("add-site ref --domain ref.test --components frontend").stdout)
    assert n >= 10
    reference = site_state(host, "ref")
    assert reference["files"] and '"state": "ready"' in reference["entry"]
    for i, (k, signal) in enumerate(signals_for(n)):
        name = f"c{i}"
        res = killed_at(host, k, f"add-site {name} --domain {name}.test --components frontend",
                        signal)
        assert stopped_by(res, signal), res.stdout[-500:]
        env = host.sh(f"cat /srv/sites/{name}/shared/.env 2>/dev/null || true").stdout
        host.siteops(f"add-site {name} --domain {name}.test --components frontend")
        final = host.sh(f"cat /srv/sites/{name}/shared/.env").stdout
        for line in env.splitlines():  # secrets made before the kill are kept
            if "=" in line and not line.startswith("#"):
                assert line in final.splitlines(), (k, line)
        assert site_state(host, name) == reference, k  # what an uninterrupted run makes
        assert f"<h1>{name}</h1>" in page(host, name)
        audit = host.siteops(f"audit {name}", check=False)
        assert audit.returncode == 0, (k, audit.stdout[-1500:])
    print(f"add-site: {n} steps, each interrupted and run again, audit clean")
    slots = [s["slot"] for s in registry(host).values()]
    assert len(slots) == len(set(slots))
    assert host.sh("curl -sS -o /dev/null -w '%{http_code}' -H 'Host: app.test' "
                   "http://127.0.0.1/").stdout == "200"  # the other site kept serving


def test_remove_site_killed_after_every_step_converges(host):
    host.siteops("add-site gone --domain gone.test --components frontend")
    n = step_count(host.siteops("remove-site gone --yes --no-backup").stdout)
    load = Load(host, "app.test")
    for i, (k, signal) in enumerate(signals_for(n, 2)):
        name = f"gone{i}"
        host.siteops(f"add-site {name} --domain {name}.test --components frontend")
        res = killed_at(host, k, f"remove-site {name} --yes --no-backup", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        again = host.siteops(f"remove-site {name} --yes --no-backup", check=False)
        # Killed after its last step, nothing is left to remove: said so.
        assert again.returncode == 0 or "nothing of it on this host" in again.stderr, again
        assert name not in registry(host)
        assert host.sh(f"id {name}", check=False).returncode != 0
        assert host.sh(f"ls /srv/sites/{name} /etc/nginx/sites-enabled/{name}.conf "
                       f"/etc/systemd/system/{name}-redis.service", check=False).returncode != 0
        assert host.sh(f"runuser -u postgres -- psql -tAc \"SELECT 1 FROM pg_database "
                       f"WHERE datname = '{name}'\"").stdout.strip() == ""
    samples, failed = load.failed()
    print(f"remove-site: {n} steps, {len(samples)} requests to another site, {len(failed)} failed")
    assert failed == [], failed[:5]
    settled(host, "app")


def test_restore_killed_after_every_step_converges(host):
    host.siteops("config app set GREETING=saved")
    host.siteops("backup app")
    n = step_count(host.siteops("restore app --yes").stdout)
    load = Load(host, "app.test")
    for k, signal in signals_for(n, 1):
        host.siteops("config app set GREETING=changed")
        res = killed_at(host, k, "restore app --yes", signal)
        assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        host.siteops("restore app --yes")
        assert page(host).endswith(" saved\n"), (k, page(host))
    samples, failed = load.failed()
    print(f"restore: {n} steps, {len(samples)} requests, {len(failed)} failed")
    assert len(samples) > 100 and failed == [], failed[:5]
    settled(host, "app")


def test_no_generated_secret_leaked_anywhere(host):
    """Sampled command lines of every process while all of the above ran, the
    action logs, the journal, and every file that is not root's or the
    secret's site's own (and not world-readable)."""
    host.sh("touch /root/cmdlines.stop; sleep 0.2")
    result = json.loads(host.sh("python3 -", input=SWEEP).stdout)
    samples = int(host.sh("wc -l < /root/cmdlines.txt").stdout)
    print(f"secrets sweep: {result['secrets']} secrets, {samples} distinct command lines sampled")
    assert result["secrets"] >= 10 and samples > 200
    assert result["leaks"] == []
