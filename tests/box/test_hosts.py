"""Several hosts: three booted machines (Debian 12 and 13), a the operator's,
b and c each joined to a by a private link of the tests' own (no route to
the host's network or anywhere else), SSH between them with a key the test
generates. The inventory, pinned host keys, the fleet views, and a site
moved from a to b under load with its data identical."""

import json
import time

import pytest

from machine import (ACME, CA, EXIT, SRC, Box, Load, commit, killed_at, link, one_suite_image,
                     start_pebble, stopped_by)
from test_backup import NOTES_APP

B, C = "192.0.2.2", "198.51.100.2"


@pytest.fixture(scope="module")
def image():
    """One suite (Debian 12 when it is chosen): what these tests prove is SSH
    between hosts and the fleet views, the same on both suites; Debian 13's
    OpenSSH is proven by the tenant and foundation tests (CI time)."""
    return one_suite_image()


@pytest.fixture(scope="module")
def fleet(image):
    boxes = [Box(image) for _ in range(3)]
    try:
        for box in boxes:
            box.start()
        a, b, c = boxes
        link(a, b, "192.0.2.1", B, "fl0")
        link(a, c, "198.51.100.1", C, "fl1")
        for box in boxes:
            box.siteops("bootstrap")
        a.sh("ssh-keygen -q -t ed25519 -N '' -C fleet -f /root/.ssh/fleet")
        pub = a.sh("cat /root/.ssh/fleet.pub").stdout
        for box, site in ((b, "bsite"), (c, "csite")):
            box.sh("cat >> /root/.ssh/authorized_keys", input=pub)
            box.siteops(f"add-site {site} --domain {site}.test --components frontend")
        yield boxes
    finally:
        for box in boxes:
            box.stop()


def host_key(box) -> str:
    return box.sh("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[1]


def inventory(box) -> dict:
    return {h["name"]: h for h in json.loads(box.siteops("hosts list --json").stdout)["hosts"]}


def test_hosts_are_added_with_their_key_pinned_and_bad_input_changes_nothing(fleet):
    a, b, c = fleet
    out = a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet").stdout
    assert host_key(b) in out and "warning" not in out, out
    assert inventory(a)["b"]["fingerprint"] == host_key(b)
    assert host_key(b) == a.sh("ssh-keygen -lf /etc/siteops/fleet_known_hosts").stdout.split()[1]
    before = a.sh("cat /etc/siteops/hosts.json /etc/siteops/fleet_known_hosts").stdout
    for command, code, said in [
        (f"hosts add c ssh://root@{C} --key /root/.ssh/fleet --fingerprint SHA256:{'x' * 43}",
         2, "refused; nothing was changed"),
        ("hosts add x ssh://root@192.0.2.99 --key /root/.ssh/fleet", 1, "no SSH answer"),
        (f"hosts add b ssh://root@{C}", 2, "is already"),
        ("hosts add c http://example.com", 2, "invalid address"),
        ("hosts add 'c;id' ssh://root@x", 2, "invalid host name"),
        ("hosts remove nosuch", 2, "no host 'nosuch'"),
    ]:
        started = time.monotonic()
        res = a.siteops(command, check=False)
        assert res.returncode == code and said in res.stderr, (command, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert time.monotonic() - started < 40, command  # a timeout, not a hang
    assert a.sh("cat /etc/siteops/hosts.json /etc/siteops/fleet_known_hosts").stdout == before
    # A host running another siteops is told so, with the command that fixes it.
    c.sh("echo '# local change' >> /opt/siteops/lib/siteops/__init__.py")
    out = a.siteops(f"hosts add c ssh://root@{C} --key /root/.ssh/fleet").stdout
    assert "warning: host c runs siteops" in out and "/tmp/siteops/bin/bootstrap" in out, out
    c.sh("sed -i '/# local change/d' /opt/siteops/lib/siteops/__init__.py")
    assert set(inventory(a)) == {"b", "c"}


def test_fleet_views_name_every_host_and_an_unreachable_one_is_critical(fleet):
    a, b, c = fleet
    for name, addr in (("b", B), ("c", C)):
        if name not in inventory(a):
            a.siteops(f"hosts add {name} ssh://root@{addr} --key /root/.ssh/fleet")
    res = a.siteops("audit --all-hosts --json", check=False)
    doc = json.loads(res.stdout)
    assert set(doc["hosts"]) == {"local", "b", "c"} and doc["unreachable"] == {}
    assert res.returncode == doc["exit_code"] == max(d["exit_code"] for d in doc["hosts"].values())
    assert "site.bsite.user" in {f["id"] for f in doc["hosts"]["b"]["findings"]}
    text = a.siteops("audit --all-hosts", check=False).stdout
    assert "fleet " in text and "3 host(s), 0 unreachable" in text, text
    rows = json.loads(a.siteops("sites list --all-hosts --json").stdout)
    assert {(r["host"], r["name"]) for r in rows} == {("b", "bsite"), ("c", "csite")}
    assert "HOST" in a.siteops("sites list --all-hosts").stdout
    usage = json.loads(a.siteops("sites usage --all-hosts --json --interval 0").stdout)
    assert {(r["host"], r["name"]) for r in usage} == {("b", "bsite"), ("c", "csite")}
    # c's link goes down: c is named, CRITICAL, within the timeout; b still answers.
    c.sh("ip link set fl1 down")
    try:
        started = time.monotonic()
        res = a.siteops("audit --all-hosts --host-timeout 15", check=False)
        assert res.returncode == 2 and "c                CRITICAL  host c" in res.stdout, res.stdout
        assert time.monotonic() - started < 60
        res = a.siteops("sites list --all-hosts --json", check=False)
        assert res.returncode == 1 and "host c" in res.stderr
        assert {r["host"] for r in json.loads(res.stdout)} == {"b"}
    finally:
        c.sh("ip link set fl1 up")


def test_a_changed_host_key_is_refused_never_learnt(fleet):
    a, b, c = fleet
    if "c" not in inventory(a):
        a.siteops(f"hosts add c ssh://root@{C} --key /root/.ssh/fleet")
    pinned = host_key(c)
    c.sh("rm /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' "
         "-f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh")
    doc = json.loads(a.siteops("audit --all-hosts --json", check=False).stdout)
    why = doc["unreachable"]["c"]
    assert "another host key" in why and host_key(c) in why and pinned in why, why
    assert host_key(c) not in a.sh("ssh-keygen -lf /etc/siteops/fleet_known_hosts").stdout
    # The operator's word: removed and added again, the new key is pinned.
    a.siteops("hosts remove c")
    a.siteops(f"hosts add c ssh://root@{C} --key /root/.ssh/fleet")
    assert inventory(a)["c"]["fingerprint"] == host_key(c)
    assert json.loads(a.siteops("audit --all-hosts --json", check=False).stdout)[
        "unreachable"] == {}


MOVE_TOML = """\
runtime = "python"
health_timeout = 20

[frontend]
start = "python app.py"
health = "/"

[workers.q]
command = "sh worker.sh"

[jobs.tick]
schedule = "*:*:0/5"
command = "sh tick.sh"
"""

# The worker moves queued items from the site's Redis into its database.
WORKER = """\
trap 'exit 0' TERM
while true; do
  item=$(redis-cli -u "$REDIS_URL" --no-auth-warning --raw BRPOP queue 1 | tail -n 1)
  if [ -n "$item" ]; then
    psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "INSERT INTO notes VALUES ('$item', 'queued')"
  fi
done
"""

TICK = "date +%s.%N >> uploads/ticks.txt\n"


def data_of(box, site: str) -> dict:
    """The site's data: its database rows, uploads (the job's ticks apart),
    Redis keys and values, and .env (its Redis port apart: the slot may differ)."""
    sh = box.sh
    redis = (f"set -a; . /srv/sites/{site}/shared/.env; for k in $(redis-cli -u \"$REDIS_URL\" "
             "--no-auth-warning --raw KEYS 'k*' | sort); do echo \"$k=$(redis-cli -u "
             "\"$REDIS_URL\" --no-auth-warning --raw GET $k)\"; done | sha256sum")
    return {
        "rows": sh(f"runuser -u postgres -- psql -At -d {site} -c "
                   "'SELECT k, v FROM notes ORDER BY k' | sha256sum").stdout.split()[0],
        "count": sh(f"runuser -u postgres -- psql -At -d {site} -c 'SELECT count(*) FROM notes'")
        .stdout.strip(),
        "uploads": sh(f"cd /srv/sites/{site}/shared/uploads && find . -type f ! -name ticks.txt "
                      "-exec sha256sum {} + | sort | sha256sum").stdout.split()[0],
        "redis": sh(redis).stdout.split()[0],
        "env": sh(f"grep -v '^REDIS_URL=' /srv/sites/{site}/shared/.env | sha256sum")
        .stdout.split()[0],
    }


def get(box, site: str, path: str) -> str:
    """GET path of site through the box's nginx (following an HTTPS site's
    redirect; its certificate checked by the tests that are about it)."""
    return box.sh(f"curl -sSkL -H 'Host: {site}.test' 'http://127.0.0.1{path}'").stdout


def ticks(box, site: str) -> list[str]:
    return box.sh(f"cat /srv/sites/{site}/shared/uploads/ticks.txt 2>/dev/null || true"
                  ).stdout.split()


def moved_site(box, site: str, options: str = "") -> None:
    """A site with an app writing to PostgreSQL, Redis and uploads, a worker
    and a job, and 20 notes."""
    box.siteops(f"add-site {site} --domain {site}.test --components frontend {options}")
    commit(box, f"/srv/repos/{site}", {"app.py": NOTES_APP.replace(
        "os.environ['SITE']", f"'{site}'"), "requirements.txt": "",
        "worker.sh": WORKER, "tick.sh": TICK, "siteops.toml": MOVE_TOML}, site)
    box.siteops(f"deploy {site} --repo /srv/repos/{site}")
    for i in range(20):
        assert get(box, site, f"/put?k=k{i}&v={site}-{i}") == "stored\n"
    box.sh(f"set -a; . /srv/sites/{site}/shared/.env; redis-cli -u \"$REDIS_URL\" "
           "--no-auth-warning LPUSH queue q1 q2 q3")
    for _ in range(100):  # the worker has taken them into the database
        if all("db=queued" in get(box, site, f"/get?k={q}") for q in ("q1", "q2", "q3")):
            return
        time.sleep(0.2)
    raise AssertionError(f"{site}'s worker did not take the queued items")


def test_a_site_moves_to_another_host_under_load_with_its_data_identical(fleet):
    a, b, c = fleet
    if "b" not in inventory(a):
        a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet")
    moved_site(a, "mv")
    for command, said in [("move-site mv --to nosuch", "no host 'nosuch'"),
                          ("move-site mv --finish", "is not forwarding"),
                          ("move-site mv --abort", "is not being moved")]:
        res = a.siteops(command, check=False)
        assert res.returncode == 2 and said in res.stderr, (command, res.stderr)
    a.sh("cat /root/.ssh/fleet.pub >> /root/.ssh/authorized_keys")
    a.siteops("hosts add self ssh://root@192.0.2.1 --key /root/.ssh/fleet")
    res = a.siteops("move-site mv --to self", check=False)
    assert res.returncode == 2 and "is this host" in res.stderr, res.stderr
    a.siteops("hosts remove self")
    a.siteops("add-site bsite --domain bsite-here.test --components frontend")
    res = a.siteops("move-site bsite --to b", check=False)  # b has a bsite of its own
    assert res.returncode != 0 and "already exists on this host" in res.stderr, res.stderr
    assert registry_of(a)["bsite"]["move"] is None
    a.siteops("remove-site bsite --yes --no-backup")
    time.sleep(6)  # the job has ticked
    load = Load(a, "mv.test", rate=20)
    started = time.monotonic()
    out = a.siteops("move-site mv --to b").stdout
    took = time.monotonic() - started
    samples, failed = load.failed()
    assert "Point DNS for mv.test at 192.0.2.2" in out, out
    assert {s[2] for s in failed} <= {503}, failed[:5]
    if failed:
        freeze = failed[-1][0] - failed[0][0]
        print(f"move: {took:.1f} s, {len(samples)} requests, {len(failed)} answered 503 "
              f"over {freeze:.1f} s")
    # b serves the site with a's data; a forwards visitors (their address kept).
    assert data_of(b, "mv") == data_of(a, "mv")
    on_a = ticks(a, "mv")
    time.sleep(6)
    assert ticks(a, "mv") == on_a, "a's job still runs"
    assert ticks(b, "mv")[:len(on_a)] == on_a and len(ticks(b, "mv")) > len(on_a)
    b.sh("set -a; . /srv/sites/mv/shared/.env; redis-cli -u \"$REDIS_URL\" --no-auth-warning "
         "LPUSH queue q4")
    for _ in range(50):
        if "db=queued" in get(b, "mv", "/get?k=q4"):
            break
        time.sleep(0.2)
    assert "db=queued" in get(b, "mv", "/get?k=q4"), "b's worker does not run"
    assert get(a, "mv", "/put?k=after&v=moved") == "stored\n"
    assert "db=moved" in get(b, "mv", "/get?k=after")
    # Served by b, which sees the visitor's own address (here a's loopback), not a's.
    assert "db=mv-3 " in get(a, "mv", "/get?k=k3&via=a")
    line = b.sh("grep 'via=a' /srv/sites/mv/shared/logs/nginx-access.log").stdout
    assert line.startswith("127.0.0.1 "), line
    # Any other process on a (another site's user, not its nginx) that sends
    # b a visitor's address is refused, and logged by its own address.
    forged = a.sh("runuser -u nobody -- curl -sS -o /dev/null -w '%{http_code}' "
                  f"-H 'Host: mv.test' -H 'CF-Connecting-IP: 198.51.100.66' "
                  f"'http://{B}/get?k=k3&via=forged'").stdout
    assert forged == "403", forged
    log = b.sh("grep 'via=forged' /srv/sites/mv/shared/logs/nginx-access.log").stdout
    assert log.startswith("192.0.2.1 ") and '" 403 ' in log and "198.51.100.66" not in log, log
    assert a.sh("stat -c '%a %U' /etc/nginx/siteops-moves/mv.conf /var/lib/siteops/move/mv.forward"
                ).stdout.split("\n")[:2] == ["600 root", "600 root"]
    assert b.sh("stat -c '%a %U' /etc/nginx/siteops-moves/mv.conf").stdout.strip() == "600 root"
    findings = {f["id"]: f for f in json.loads(a.siteops("audit --json", check=False).stdout)[
        "findings"]}
    assert findings["site.mv.move"]["severity"] == "warning"
    audit_b = json.loads(b.siteops("audit --json", check=False).stdout)
    assert audit_b["exit_code"] == 0, [f for f in audit_b["findings"] if f["severity"] != "ok"]
    # --finish: visitors came through a in the last hour: said, and --yes needed.
    res = a.siteops("move-site mv --finish", check=False)
    assert res.returncode == 2 and "in the last hour" in res.stderr, res.stderr
    assert registry_of(a)["mv"]["move"]["stage"] == "forwarding"
    # --finish --yes: nothing of the site is left on a; b keeps serving it.
    a.siteops("move-site mv --finish --yes")
    assert a.sh("test -e /etc/nginx/siteops-moves/mv.conf || test -e "
                "/var/lib/siteops/move/mv.forward", check=False).returncode != 0
    assert b.sh("test -e /etc/nginx/siteops-moves/mv.conf", check=False).returncode != 0
    assert "mv" not in registry_of(a)
    assert a.sh("test -e /srv/sites/mv || id mv", check=False).returncode != 0
    assert "mv notes" in get(b, "mv", "/")
    assert registry_of(b)["mv"]["forwarded_by"] == []
    assert b.sh("test -e /var/lib/siteops/move/mv", check=False).returncode != 0
    for box in (a, b):
        doc = json.loads(box.siteops("audit --json", check=False).stdout)
        assert doc["exit_code"] == 0, [f for f in doc["findings"] if f["severity"] != "ok"]


def registry_of(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]


def test_an_aborted_move_leaves_the_site_here_as_it_was_and_nothing_there(fleet):
    a, b, c = fleet
    if "b" not in inventory(a):
        a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet")
    moved_site(a, "back")
    # The operator's maintenance goes along to b, and stays here after an abort.
    a.siteops("maintenance back on --message 'Stock-taking until 14:00'")
    a.siteops("move-site back --to b")
    assert registry_of(b)["back"]["maintenance"]["message"] == "Stock-taking until 14:00"
    assert "Stock-taking until 14:00" in get(a, "back", "/")  # forwarded: b's page
    res = a.siteops("move-site back --abort", check=False)
    assert res.returncode == 2 and "--yes" in res.stderr and "nothing was changed" in res.stderr
    a.siteops("move-site back --abort --yes")
    assert registry_of(a)["back"]["maintenance"]["message"] == "Stock-taking until 14:00"
    a.siteops("maintenance back off")
    entry = registry_of(a)["back"]
    assert (entry["move"], entry["maintenance"], entry["held"]) == (None, None, False)
    assert "db=back-3 " in get(a, "back", "/get?k=k3")
    assert "back" not in registry_of(b)
    assert b.sh("test -e /srv/sites/back || test -e /var/lib/siteops/move/back",
                check=False).returncode != 0
    before = ticks(a, "back")
    time.sleep(6)
    assert len(ticks(a, "back")) > len(before), "a's job does not run again"
    doc = json.loads(a.siteops("audit --json", check=False).stdout)
    assert doc["exit_code"] == 0, [f for f in doc["findings"] if f["severity"] != "ok"]


def stage(box, site: str) -> str | None:
    move = registry_of(box).get(site, {}).get("move")
    return move and move["stage"]


def stopped_at_every_step(a, b, command: str, site: str) -> int:
    """Run command on a, stopped after its k-th step (on a itself, or on b: the
    steps of the commands a runs there over SSH, by the test-only switch set
    in b's root shell), k = 1, 2, ... from each stage it reaches, a signal per
    stop in turn, until a run completes; returns how many runs were stopped."""
    try:
        return stops(a, b, command, site)
    finally:  # a failure must not leave b's commands stopping in the tests after
        if b is not None:
            b.sh("rm -f /root/kill.env")


def stops(a, b, command: str, site: str) -> int:
    runs, k, where = 0, 1, stage(a, site)
    seen = []  # (stage, k, signal, the run's last line): what a failure shows
    while True:
        signal = list(EXIT)[runs % 3]
        if b is None:
            res = killed_at(a, k, command, signal)
        else:
            b.sh(f"echo 'export SITEOPS_KILL_AFTER_STEP={k} SITEOPS_KILL_SIGNAL={signal}' "
                 "> /root/kill.env")
            res = a.sh(f"{SRC}/bin/{command}; echo \"exit $?\"", check=False)
        if res.stdout.strip().endswith("exit 0") or (runs and "is not being moved" in res.stderr):
            break  # done (an abort stopped after its last step is done)
        if b is None:
            assert stopped_by(res, signal), res.stdout[-500:] + res.stderr[-1500:]
        else:
            assert res.stdout.strip().endswith("exit 1") and "b" in res.stderr, \
                res.stdout[-500:] + res.stderr[-1500:]
        runs += 1
        seen.append((where, k, signal, (res.stderr.strip().splitlines() or [""])[-1][:160]))
        assert runs < 80, f"it does not converge: {seen}"
        now = stage(a, site)
        k, where = (1 if now != where else k + 1), now
    return runs


def test_a_move_and_an_abort_stopped_at_every_step_on_either_host_converge(fleet):
    """Every step of move-site and of --abort, on the source and on the target,
    stopped by each signal in turn, then run again: the site is served
    throughout (only the freeze's 503s), its data identical, and an abort
    leaves the source as it was and nothing on the target."""
    a, b, c = fleet
    if "b" not in inventory(a):
        a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet")
    b.sh("sed -i '1i [ -f /root/kill.env ] && . /root/kill.env' /root/.bashrc")
    assert b.sh("echo 'export X=1' > /root/kill.env; true").returncode == 0
    assert a.sh(f"ssh -i /root/.ssh/fleet -o StrictHostKeyChecking=no root@{B} 'echo $X'"
                ).stdout.strip() == "1", "b's shell does not read the test-only switch"
    b.sh("rm /root/kill.env")
    moved_site(a, "km")
    before = data_of(a, "km")
    load = Load(a, "km.test", rate=20)
    counts = {}
    for side, label in ((None, "a"), (b, "b")):
        counts[f"move, stopped on {label}"] = stopped_at_every_step(
            a, side, "move-site km --to b", "km")
        assert stage(a, "km") == "forwarding" and data_of(b, "km") == before
        counts[f"abort, stopped on {label}"] = stopped_at_every_step(
            a, side, "move-site km --abort --yes", "km")
        entry = registry_of(a)["km"]
        assert (entry["move"], entry["maintenance"], entry["held"]) == (None, None, False)
        assert data_of(a, "km") == before and "km" not in registry_of(b)
        assert b.sh("test -e /srv/sites/km || test -e /var/lib/siteops/move/km || id km",
                    check=False).returncode != 0
    samples, failed = load.failed()
    print(f"move-site stopped at every step: {counts}; {len(samples)} requests, "
          f"{len(failed)} answered 503 (the freezes)")
    assert len(samples) > 500 and {s[2] for s in failed} <= {503}, failed[:5]
    for box in (a, b):
        doc = json.loads(box.siteops("audit --json", check=False).stdout)
        assert doc["exit_code"] == 0, [f for f in doc["findings"] if f["severity"] != "ok"]


def served(box, name: str) -> str:
    """The SHA-256 fingerprint of the certificate the box's nginx serves for name."""
    return box.sh(f"openssl s_client -connect 127.0.0.1:443 -servername {name} </dev/null "
                  "2>/dev/null | openssl x509 -noout -fingerprint -sha256").stdout.strip()


def test_an_https_site_moves_with_its_certificate_and_is_forwarded_over_verified_tls(fleet):
    a, b, c = fleet
    if "b" not in inventory(a):
        a.siteops(f"hosts add b ssh://root@{B} --key /root/.ssh/fleet")
    start_pebble(a)
    a.sh("echo '127.0.0.1 sec.test' >> /etc/hosts")
    moved_site(a, "sec", f"--tls {ACME}")
    # The test CA's root in a's system store, as a private CA's would be.
    a.sh(f"curl -s --cacert {CA} https://127.0.0.1:15000/roots/0 "
         "> /usr/local/share/ca-certificates/pebble-root.crt && update-ca-certificates >/dev/null")
    cert = served(a, "sec.test")
    before = data_of(a, "sec")
    load = Load(a, "sec.test", rate=20, https=True)
    a.siteops("move-site sec --to b")
    samples, failed = load.failed()
    assert len(samples) > 100 and {s[2] for s in failed} <= {503}, failed[:5]
    assert served(b, "sec.test") == cert and data_of(b, "sec") == before
    assert b.sh("test -s /etc/letsencrypt/renewal/sec.conf").returncode == 0
    # a's nginx proxies to b over HTTPS, verified against the system's CAs.
    conf = a.sh("cat /etc/nginx/sites-available/sec.conf").stdout
    assert f"proxy_pass https://{B}" in conf and "proxy_ssl_verify on;" in conf
    page = a.sh("curl -sS --cacert /etc/ssl/certs/ca-certificates.crt "
                "'https://sec.test/get?k=k3&via=tls'").stdout
    assert "db=sec-3 " in page, page
    line = b.sh("grep 'via=tls' /srv/sites/sec/shared/logs/nginx-access.log").stdout
    assert line.startswith("127.0.0.1 "), line
    a.siteops("move-site sec --finish --yes")
    assert "sec" not in registry_of(a) and served(b, "sec.test") == cert
