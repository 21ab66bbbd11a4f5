"""A real booted systemd machine for box tests: systemd-nspawn over an overlay
of a cached Debian 12 or 13 image, private network, the checkout bound read-only
at /opt/siteops-src. Test code drives it only through `Box.sh`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CGROUPS = Path("/sys/fs/cgroup")
SRC = "/opt/siteops-src"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A box writes to a sparse file of this size (bench/density.py with 500 sites
# writes some 40 GB; a test, a few hundred MB).
DISK_SIZE = "64G"
# A probe run as a site: try to bind each port given, print bound or refused.
BIND = """\
import socket, sys
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(port, "bound", flush=True)
    except OSError as e:
        print(port, "refused", e.strerror, flush=True)
    s.close()
"""


def one_suite_image() -> Path:
    """The image of a module that boots machines of its own on one suite:
    Debian 12 when the run has it, else the run's first suite."""
    if os.geteuid() != 0:
        import pytest
        pytest.fail("box tests need root (systemd-nspawn, mount)")
    suites = os.environ.get("SITEOPS_BOX_SUITES", "bookworm trixie").split()  # as conftest.py
    return build_image("bookworm" if "bookworm" in suites else suites[0])


def build_image(suite: str | None = None) -> Path:
    """Build the cached root image of a Debian suite (default: bookworm, or
    $SITEOPS_BOX_SUITE) if missing and return its path."""
    env = dict(os.environ, **({"SITEOPS_BOX_SUITE": suite} if suite else {}))
    out = subprocess.run(["bash", str(REPO / "tests/box/build-image.sh")],
                         check=True, capture_output=True, text=True, env=env)
    return Path(out.stdout.strip().splitlines()[-1])


class Machine:
    """What the box and the VM share: the suite's commands and checked results."""

    kind = "machine"

    def sh(self, script: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def checked(self, res: subprocess.CompletedProcess, script: str,
                check: bool) -> subprocess.CompletedProcess:
        """res, or an AssertionError with its output when check and it failed."""
        if check and res.returncode != 0:
            raise AssertionError(f"{self.kind} command failed ({res.returncode}): {script}\n"
                                 f"--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
        return res

    def siteops(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one of the suite's commands from the checkout in the machine."""
        return self.sh(f"{SRC}/bin/{command}", check=check)

    def two_sites(self, scripts: dict[str, str]) -> None:
        """Sites shop and blog (slots 0 and 1), each with PYTHON_APP deployed from
        /srv/repos/NAME; scripts are written to /srv/NAME.py for any user to run."""
        for site in ("shop", "blog"):
            self.siteops(f"add-site {site} --domain {site}.test --components frontend "
                         f"--start frontend='/usr/bin/env SITE={site} python3 app.py'")
            commit(self, f"/srv/repos/{site}", {"app.py": PYTHON_APP}, site)
            self.siteops(f"deploy {site} --repo /srv/repos/{site}")
        for name, text in scripts.items():
            self.sh(f"cat > /srv/{name}.py && chmod 644 /srv/{name}.py", input=text)

    def run_as_site(self, site: str, slot: int, unit: str, command: str) -> None:
        """Start command as the site's user in the site's slice, bound by the
        SocketBind rules of the site's units (its three blocks of ten ports),
        as a hostile process of that site would be."""
        binds = " ".join(f"-p SocketBindAllow=tcp:{p + 10 * slot}-{p + 10 * slot + 9}"
                         for p in (3100, 4000, 5000))
        self.sh(f"systemd-run --quiet --unit={unit} -p User={site} -p Group={site} "
                f"-p Slice=siteops-{site}.slice {binds} -p SocketBindDeny=any {command}")


class Box(Machine):
    kind = "box"

    def __init__(self, image: Path, binds: dict[str, str] | None = None,
                 prefix: str = "siteops-box-"):
        self.image = image
        self.binds = binds or {}  # host directory: path in the box (read-write)
        self.work = Path(tempfile.mkdtemp(prefix=prefix))  # try's: siteops-try-
        self.merged = self.work / "root"
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def start(self, timeout: float = 90) -> "Box":
        """Mount the overlay, boot the machine and wait until systemd is up.
        What the box writes goes to a file system of its own (a sparse file,
        loop-mounted): its disk is not the test machine's, whose fullness
        audit's disk check would otherwise report."""
        disk, fs = self.work / "disk.img", self.work / "fs"
        subprocess.run(["truncate", "-s", DISK_SIZE, str(disk)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
        fs.mkdir()
        subprocess.run(["mount", "-o", "loop", str(disk), str(fs)], check=True)
        for d in (fs / "upper", fs / "overlay-work", self.merged):
            d.mkdir()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.image},upperdir={fs}/upper,"
                        f"workdir={fs}/overlay-work", str(self.merged)], check=True)
        log = open(self.work / "console.log", "wb")
        cgroups = self._own_cgroups()
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network",
             "-D", str(self.merged), f"--bind-ro={REPO}:{SRC}",
             *(f"--bind={src}:{dest}" for src, dest in self.binds.items()), "--boot",
             "--console=passive"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=lambda: [
                (group / "cgroup.procs").write_text("0") for group in cgroups])
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"box did not boot: {self.console()[-2000:]}")
            self.leader = self._find_leader()
            time.sleep(0.2)
        while time.monotonic() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"box stuck in state {state!r}")

    def _own_cgroups(self) -> list[Path]:
        """A cgroup of the box's own in each hierarchy its systemd uses. nspawn
        (--keep-unit) puts the machine under the cgroup it was started in, and
        this host runs no systemd: started from the root cgroup, every box
        would share /payload, and one box's systemd would stop, kill and
        remove the cgroups of another's units of the same name (rsyslog, a
        transient test unit): the flakes of full runs, where two lanes' boxes
        run at once."""
        groups = []
        for hierarchy in ("systemd", "unified"):
            root = CGROUPS / hierarchy
            if (root / "cgroup.procs").exists():
                (root / self.work.name).mkdir(exist_ok=True)
                groups.append(root / self.work.name)
        return groups

    def _drop_cgroups(self) -> None:
        for hierarchy in ("systemd", "unified"):
            top = CGROUPS / hierarchy / self.work.name
            if top.is_dir():
                for path, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass

    def _find_leader(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except FileNotFoundError:
            return 0
        for pid in pids:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except FileNotFoundError:
                continue
        return 0

    def console(self) -> str:
        return (self.work / "console.log").read_text(errors="replace")

    def sh(self, script: str, check: bool = True, input: str | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a shell script inside the box as root; raise on failure if check."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
                "LANG=C.UTF-8", "HOME=/root", "TERM=dumb", "bash", "-c", script]
        res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        return self.checked(res, script, check)

    def stop(self) -> None:
        """Power the machine off, unmount and delete the overlay."""
        if self.proc and self.proc.poll() is None:
            if self.leader:
                self.sh("systemctl poweroff", check=False, timeout=30)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        subprocess.run(["umount", "-R", str(self.merged)], check=False, capture_output=True)
        subprocess.run(["umount", str(self.work / "fs")], check=False, capture_output=True)
        self._drop_cgroups()
        shutil.rmtree(self.work, ignore_errors=True)


# Two real apps, one per runtime, each answering with its site, runtime and port.
NODE_APP = """\
const http = require("http");
http.createServer((req, res) => {
  res.end(`${process.env.SITE} node ${process.env.PORT} ${req.url}\\n`);
}).listen(Number(process.env.PORT), process.env.HOST);
"""

PYTHON_APP = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['SITE']} python {os.environ['PORT']} {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


def commit(box: "Box", repo: str, files: dict[str, str | None], message: str) -> str:
    """Write files (None deletes one) into a git repository in the box, creating
    it on first use, commit them and return the new commit id."""
    box.sh(f"test -d {repo}/.git || git init -q -b main {repo}")
    for name, text in files.items():
        if text is None:
            box.sh(f"git -C {repo} rm -q -- {name}")
        else:
            box.sh(f"mkdir -p $(dirname {repo}/{name}) && cat > {repo}/{name}", input=text)
    box.sh(f"git -C {repo} add -A && git -C {repo} -c user.name=t -c user.email=t@t "
           f"commit -q --allow-empty -m '{message}'")
    return box.sh(f"git -C {repo} rev-parse HEAD").stdout.strip()


class Load:
    """bench/load.py running in the box in the background until stopped."""

    def __init__(self, box, host_header: str, rate: int = 40, https: bool = False):
        self.box = box
        box.sh("rm -f /tmp/load.stop /tmp/load.json")
        box.sh(f"setsid python3 {SRC}/bench/load.py --host {host_header} --rate {rate} "
               f"--workers 4 --duration 3600 {'--https ' if https else ''}"
               "--out /tmp/load.json >/tmp/load.log 2>&1 &")
        time.sleep(1)

    def stop(self) -> list:
        self.box.sh("touch /tmp/load.stop; for i in $(seq 100); do test -s /tmp/load.json && break; "
                    "sleep 0.1; done")
        samples = json.loads(self.box.sh("cat /tmp/load.json").stdout)
        assert samples and time.time() - samples[-1][0] < 5, "the load ended before it was stopped"
        return samples

    def failed(self) -> tuple[list, list]:
        """Stop it: (every sample, those that were not a 200)."""
        samples = self.stop()
        return samples, [s for s in samples if s[2] != 200]


# -- the crash harness (tests/box/test_crash.py, test_tls.py) ------------------

# How a command ends when it is sent each signal: SIGKILL (kill -9, a crash),
# SIGINT (Ctrl-C) and SIGTERM (systemd stopping a unit, a cancelled CI job).
EXIT = {"KILL": 137, "INT": 130, "TERM": 143}


def signals_for(steps: int, offset: int = 0) -> list[tuple[int, str]]:
    """(step, signal) pairs for the crash harness: after every step each signal
    when SITEOPS_CRASH_ALL_SIGNALS=1 (on demand: about three times as long),
    else one signal per step in turn, starting at offset, so that every step
    and every signal are covered in each run."""
    names = list(EXIT)
    if os.environ.get("SITEOPS_CRASH_ALL_SIGNALS") == "1":
        return [(k, name) for name in names for k in range(1, steps + 1)]
    return [(k, names[(k + offset) % len(names)]) for k in range(1, steps + 1)]


def until(check, what, timeout: float = 30):
    """check()'s first true result, asked every 0.5 s; after timeout seconds
    an AssertionError saying what (a string, or a function giving one)."""
    deadline = time.time() + timeout
    while not (result := check()):
        assert time.time() < deadline, what() if callable(what) else what
        time.sleep(0.5)
    return result


def killed_at(box, k: int, command: str, signal: str = "KILL") -> subprocess.CompletedProcess:
    """Run a siteops command that sends itself signal after its k-th step
    (SITEOPS_KILL_AFTER_STEP, a test-only switch); stdout ends "exit N" (EXIT)."""
    return box.sh(f"SITEOPS_KILL_AFTER_STEP={k} SITEOPS_KILL_SIGNAL={signal} "
                  f"{SRC}/bin/{command}; echo \"exit $?\"", check=False)


def stopped_before_changes(box, command: str, then, offset: int = 0, most: int = 20) -> int:
    """Run command sent a signal just before its k-th change of the registry
    (SITEOPS_KILL_BEFORE_CHANGE: between two steps, where a switch commits),
    for k = 1, 2, ... until a run has no k-th change and ends 0; then(k) after
    each stopped run (which runs it again and checks). Returns how many."""
    names = list(EXIT)
    for k in range(1, most + 1):
        signal = names[(k + offset) % len(names)]
        res = box.sh(f"SITEOPS_KILL_BEFORE_CHANGE={k} SITEOPS_KILL_SIGNAL={signal} "
                     f"{SRC}/bin/{command}; echo \"exit $?\"", check=False)
        if not stopped_by(res, signal):
            assert res.stdout.strip().endswith("exit 0"), res.stdout[-500:] + res.stderr[-1500:]
            return k - 1
        then(k)
    raise AssertionError(f"{command}: more than {most} registry changes")


def stopped_at_moments(box, command: str, delays: list[tuple[float, str]], then) -> None:
    """Run command in a session of its own and send its process group each
    (seconds after its start, signal) in turn: inside a step as much as
    between two; then(delay) after each. SIGINT and SIGTERM end it promptly
    with their exit code, or it had already finished."""
    for delay, signal in delays:
        out = box.sh(f"setsid {SRC}/bin/{command} >/tmp/timed.log 2>&1 & pid=$!; "
                     f"sleep {delay:.2f}; kill -{signal} -- -$pid; wait $pid; echo \"exit $?\"; "
                     "cat /tmp/timed.log").stdout
        assert out.startswith("exit "), out
        if signal != "KILL":
            assert out.startswith(("exit 0", f"exit {EXIT[signal]}")), (delay, signal, out)
        then(delay)


def random_moments(seed: int, seconds: float, count: int) -> list[tuple[float, str]]:
    """count (delay, signal) pairs spread at random over a command's duration,
    every signal in turn; the seed is printed so a failure can be replayed."""
    import random
    rng = random.Random(seed)
    print(f"random moments: seed {seed} over {seconds:.2f} s")
    names = list(EXIT)
    return sorted((round(rng.uniform(0.05, seconds), 2), names[i % len(names)])
                  for i in range(count))


def stopped_by(res: subprocess.CompletedProcess, signal: str) -> bool:
    """True if the command killed_at ran ended the way signal ends it."""
    return res.stdout.strip().endswith(f"exit {EXIT[signal]}")


def step_count(output: str) -> int:
    """How many steps a command's output reports."""
    return len(re.findall(r"^(changed|ok)\s{2,}", output, re.M))


def states(box, *units: str, settle: float = 15) -> list[str]:
    """The units' ActiveState once none is still stopping: a switch tells
    systemd to stop the old instances and does not wait for it."""
    names = " ".join(units)
    found = box.sh(f"for i in $(seq {int(settle * 10)}); do systemctl show -p ActiveState --value "
                   f"{names} | grep -q deactivating || break; sleep 0.1; done; "
                   f"systemctl show -p ActiveState --value {names}").stdout.split()
    failed = [u for u, state in zip(units, found) if state == "failed"]
    if failed:  # why, in the failing test's output
        print(box.sh(f"systemctl status --no-pager -n 0 {' '.join(failed)}; "
                     f"journalctl --no-pager -n 40 {' '.join('-u ' + u for u in failed)}",
                     check=False).stdout)
    return found


def crash(box, unit: str) -> None:
    """SIGKILL to the unit's main process, as a crash would. Not `systemctl
    kill`: on a busy host it can fail to signal the unit's other processes
    ("Input/output error") and fail the test for the tool's own reasons."""
    box.sh(f"pid=$(systemctl show -p MainPID --value {unit}); [ \"$pid\" -gt 0 ] && "
           "kill -KILL \"$pid\"")


def registry(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]


def settled(box, name: str) -> None:
    """No lock held, no release left building, nginx valid, audit without a
    critical finding for the site, and every file siteops generates for it
    (units, live drop-ins, job units, nginx, Redis, logrotate) as the
    registry renders it."""
    box.sh(f"flock -n /var/lib/siteops/locks/{name}.lock true")
    site = registry(box)[name]
    assert [r for r, rel in site["releases"].items() if rel["result"] == "building"] == []
    box.sh("nginx -t -q")
    res = box.siteops(f"audit {name} --json", check=False)
    bad = [f for f in json.loads(res.stdout)["findings"] if f["severity"] == "critical"
           or (f["severity"] != "ok" and ".file:" in f["id"])]
    assert bad == [], bad


# What add-site made for a site, comparable between sites: its name, its slot's
# ports and its generated secrets replaced by placeholders; times left out.
SITE_STATE = """\
import glob, json, os, pwd, re, subprocess, sys
sys.path.insert(0, "/opt/siteops-src/lib")
from siteops import envfile, units
name = sys.argv[1]
site = json.load(open("/var/lib/siteops/registry.json"))["sites"][name]
env_text = open(f"/srv/sites/{name}/shared/.env").read()
secrets = sorted(envfile.secrets_of(env_text), key=len, reverse=True)
ports = {str(p): f"{block}+{p - first}"
         for block, (first, last) in zip(("frontend", "api", "extra"),
                                         units.block_ranges(site["slot"]))
         for p in range(first, last + 1)}
def norm(text):
    for secret in secrets:
        text = text.replace(secret, "SECRET")
    text = re.sub(r"\\b\\d{4}\\b", lambda m: ports.get(m.group(), m.group()), text)
    return text.replace(name, "NAME")
files = [f"/etc/nginx/sites-available/{name}.conf", f"/etc/logrotate.d/siteops-{name}",
         f"/etc/siteops/redis/{name}.conf", f"/etc/systemd/system/siteops-{name}.slice",
         *glob.glob(f"/etc/systemd/system/{name}-*"),
         *glob.glob(f"/etc/systemd/system/{name}-*.d/*")]
out = {"files": {}, "tree": {}}
for path in sorted(files):
    if os.path.isfile(path):
        out["files"][norm(path)] = norm(open(path).read())
out["enabled"] = norm(os.readlink(f"/etc/nginx/sites-enabled/{name}.conf"))
for d, dirs, fs in os.walk(f"/srv/sites/{name}"):
    data = d.endswith(("/logs", "/redis"))  # written by nginx and Redis as they run
    for entry in [d] + ([] if data else [os.path.join(d, f) for f in fs]):
        st = os.lstat(entry)
        out["tree"][norm(entry)] = (oct(st.st_mode), norm(pwd.getpwuid(st.st_uid).pw_name))
out["env_keys"] = [l.split("=", 1)[0] for l in env_text.splitlines() if "=" in l]
for key in ("created", "updated", "slot", "uid", "history"):
    site.pop(key, None)
out["entry"] = norm(json.dumps(site, sort_keys=True))
user = pwd.getpwnam(name)
out["user"] = norm(f"{user.pw_dir} {user.pw_shell} " + subprocess.run(
    ["id", "-nG", name], capture_output=True, text=True).stdout.strip())
out["role"] = norm(subprocess.run(
    ["runuser", "-u", "postgres", "--", "psql", "-tAc",
     f"SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, "
     f"(SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{name}') "
     f"FROM pg_roles WHERE rolname = '{name}'"], capture_output=True, text=True).stdout)
print(json.dumps(out, sort_keys=True))
"""


def site_state(box, name: str) -> dict:
    """What add-site made for the site (SITE_STATE), to compare with another."""
    return json.loads(box.sh(f"python3 - {name}", input=SITE_STATE).stdout)


def link(a: "Box", b: "Box", a_addr: str, b_addr: str, name: str) -> None:
    """A private link between two booted boxes (a veth pair whose two ends both
    leave the host's namespace): a_addr and b_addr (a /24 of the tests' own,
    e.g. 192.0.2.1 and 192.0.2.2), device `name` in each, no route anywhere else."""
    ends = (f"{name}a{a.leader % 10000}", f"{name}b{b.leader % 10000}")
    subprocess.run(["ip", "link", "add", ends[0], "type", "veth", "peer", "name", ends[1]],
                   check=True)
    for box, end, addr in ((a, ends[0], a_addr), (b, ends[1], b_addr)):
        subprocess.run(["ip", "link", "set", end, "netns", str(box.leader)], check=True)
        box.sh(f"ip link set {end} name {name} && ip addr add {addr}/24 dev {name} && "
               f"ip link set {name} up")


# -- a test ACME CA (tests/box/test_tls.py, test_hosts.py) ---------------------

PEBBLE = "https://127.0.0.1:14000/dir"
CA = "/etc/pebble/ca.pem"
ACME = f"--acme-server {PEBBLE} --acme-ca-bundle {CA} --email ops@example.com"


def start_pebble(box) -> None:
    """Debian's pebble (Let's Encrypt's test ACME server) on 127.0.0.1:14000,
    HTTP-01 validated through the box's nginx; its own HTTPS with a throwaway
    CA (CA, which certbot is told to trust)."""
    box.sh("mkdir -p /etc/pebble && cd /etc/pebble && "
           "openssl req -x509 -newkey rsa:2048 -nodes -days 3 -subj /CN=pebble-ca "
           "-keyout ca.key -out ca.pem 2>/dev/null && "
           "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out req.pem "
           "2>/dev/null && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext && "
           "openssl x509 -req -in req.pem -CA ca.pem -CAkey ca.key -CAcreateserial -days 3 "
           "-extfile ext -out cert.pem 2>/dev/null")
    box.sh("cat > /etc/pebble/config.json", input=json.dumps({"pebble": {
        "listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
        "certificate": "/etc/pebble/cert.pem", "privateKey": "/etc/pebble/key.pem",
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "",
        "externalAccountBindingRequired": False}}))
    box.sh("systemd-run --unit=pebble -E PEBBLE_VA_NOSLEEP=1 -E PEBBLE_WFE_NONCEREJECT=0 "
           "/usr/bin/pebble -config /etc/pebble/config.json && "
           "for i in $(seq 100); do curl -s --cacert /etc/pebble/ca.pem "
           f"{PEBBLE} >/dev/null && exit 0; sleep 0.1; done; exit 1")


# -- alert receivers (notify's box and VM tests) --------------------------------

# A webhook receiver on 127.0.0.1:8765 (each POST a line of /root/hooks.jsonl)
# and, with --smtp, the least of an SMTP server on 127.0.0.1:2525 (each
# message into /root/mails.txt): the standard library only.
RECEIVERS = r"""
import http.server, socketserver, sys, threading

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/root/hooks.jsonl", "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *a):
        pass

class Sink(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 sink\r\n")
        data = None
        while line := self.rfile.readline():
            if data is not None:
                if line == b".\r\n":
                    with open("/root/mails.txt", "ab") as f:
                        f.write(b"".join(data) + b"\n=====\n")
                    data = None
                    self.wfile.write(b"250 ok\r\n")
                else:
                    data.append(line)
            elif line.upper().startswith(b"DATA"):
                data = []
                self.wfile.write(b"354 go\r\n")
            elif line.upper().startswith(b"QUIT"):
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")

servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 8765), Hook)]
if "--smtp" in sys.argv:
    servers.append(socketserver.ThreadingTCPServer(("127.0.0.1", 2525), Sink))
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""


def start_receivers(box, smtp: bool, fresh: bool = True) -> None:
    """The receivers started, and the hourly audit timer stopped: each audit
    whose alerts a test counts is the test's own."""
    box.sh("systemctl stop siteops-audit.timer")
    if fresh:
        box.sh("rm -f /root/hooks.jsonl /root/mails.txt")
    box.sh("cat > /root/receivers.py", input=RECEIVERS)
    box.sh(f"setsid python3 /root/receivers.py {'--smtp' if smtp else ''} >/dev/null 2>&1 & "
           "for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8765) 2>/dev/null && exit 0; "
           "sleep 0.1; done; exit 1")


def hooks(box) -> list:
    return [json.loads(line) for line in
            box.sh("cat /root/hooks.jsonl 2>/dev/null || true").stdout.splitlines()]


def events_of(box, kind: str) -> list:
    return [e for doc in hooks(box) for e in doc["events"] if e["kind"] == kind]
