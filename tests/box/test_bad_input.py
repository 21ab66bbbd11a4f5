"""A bad-input corpus against every command and flag, on booted Debian 12
and 13 machines with a deployed site: each invocation exits 2 (audit: 3,
its "could not run") with one clear error line, and the server is exactly
as before (registry, /etc/nginx, /etc/systemd/system, /etc/siteops, users,
databases, the site's tree)."""

import difflib
import json
import shlex

import pytest

from machine import PYTHON_APP, commit

# Option-like, empty, long, unicode, control characters, shell and path tricks.
CORPUS = ["", "-rf", "a" * 300, "Ünïcödé", "x\ny", "x\x1b[31my", "../../etc", "$(id)",
          "a b", "\u202eevil", "-1", "NaN"]

# (command with {} for the value, {value: exit code} of the corpus values
# that are not bad input there: exit 1 is a runtime refusal, 0 a no-op)
RUNTIME = {"Ünïcödé": 1, "$(id)": 1, "NaN": 1}  # valid ref names the repository lacks
CASES = [
    ("add-site {} --domain ok.test", {}),
    ("add-site zz --domain {}", {}),
    ("add-site zz --domain ok.test --components {}", {}),
    ("add-site zz --domain ok.test --start {}", {}),
    ("deploy {}", {}),
    ("deploy app --ref {}", RUNTIME),
    ("deploy app --repo {}", {}),
    ("deploy app --start {}", {}),
    ("deploy app --health {}", {}),
    ("deploy app --keep {}", {}),
    ("deploy app --min-free-mb {}", {}),
    ("rollback {}", {}),
    ("rollback app --to {}", {}),
    ("config {}", {}),
    ("config app set {}", {}),
    ("config app unset {}", {"NaN": 0}),  # a key that is not set: nothing to do
    ("limits {}", {}),
    ("limits app --memory-max {}", {}),
    ("limits app --tasks-max {}", {}),
    ("limits app --cpu-weight {}", {}),
    ("limits app --io-weight {}", {}),
    ("tls {}", {}),
    ("tls app --email {}", {}),
    ("tls app --acme-server {}", {}),
    ("logs {}", {}),
    ("logs app {}", {}),
    ("logs app -n {}", {}),
    ("remove-site {} --yes", {}),
    ("restore {} --yes", {}),
    ("restore app --yes --snapshot {}", {}),
    ("backup {}", {}),
    ("backup --repository {}", {}),
    ("backup --keep-daily {}", {}),
    ("sites show {}", {}),
    ("sites usage {}", {}),
    ("sites usage --window {}", {}),
    ("audit {}", {}),
    ("bootstrap --repo-dir {}", {}),
    ("bootstrap --deploy-key {}", {}),
    ("bootstrap --cloudflare-ips {}", {}),
]

STATE = ("cat /var/lib/siteops/registry.json; "
         "find /etc/nginx /etc/systemd/system /etc/siteops /srv/sites/app -xdev "
         "-printf '%p %m %u %s %l\\n' | sort; "
         "find /etc/nginx /etc/systemd/system /etc/siteops -xdev -type f -exec md5sum {} + | sort; "
         "getent passwd | sort; "
         "runuser -u postgres -- psql -tAc 'SELECT datname FROM pg_database ORDER BY 1'")


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops("add-site app --domain app.test --components frontend "
                "--start frontend='/usr/bin/env SITE=app python3 app.py'")
    commit(box, "/srv/repos/app", {"app.py": PYTHON_APP}, "app")
    box.siteops("deploy app --repo /srv/repos/app")
    return box


RUNNER = """\
import json, subprocess, sys
out = []
for argv in json.load(sys.stdin):
    res = subprocess.run(["/opt/siteops-src/bin/" + argv[0], *argv[1:]], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True, errors="replace")
    out.append([argv, res.returncode, res.stderr])
json.dump(out, sys.stdout)
"""


def test_every_bad_value_is_refused_with_one_line_and_nothing_changes(host):
    before = host.sh(STATE).stdout
    cases = []
    expected = {}
    for template, valid in CASES:
        for value in CORPUS:
            argv = shlex.split(template.replace("{}", "\0"))
            argv = [value if a == "\0" else a for a in argv]
            cases.append(argv)
            expected[shlex.join(argv)] = valid.get(value, 3 if argv[0] == "audit" else 2)
    host.sh("cat > /tmp/runner.py", input=RUNNER)
    results = json.loads(host.sh("python3 /tmp/runner.py", input=json.dumps(cases)).stdout)
    wrong = []
    for argv, code, stderr in results:
        want = expected[shlex.join(argv)]
        lines = stderr.strip().splitlines()
        if code != want or (want and (len(lines) != 1
                                      or not lines[0].startswith(f"{argv[0]}: error: "))):
            wrong.append(f"{shlex.join(argv)[:90]}: exit {code}: {stderr.strip()[-300:]!r}")
    after = host.sh(STATE).stdout
    print(f"bad input: {len(results)} invocations, {len(wrong)} not refused cleanly")
    assert wrong == [], "\n".join(wrong[:60])
    assert after == before, "\n".join(difflib.unified_diff(
        before.splitlines(), after.splitlines(), lineterm="", n=1))
