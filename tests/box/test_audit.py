"""audit and sites on real booted Debian 12 and 13 machines: two deployed sites
audit clean, then each breakage is made by hand, found with the right id,
severity and exit code, and repaired by --fix where that is safe."""

import datetime
import json

import pytest

from machine import SRC, commit

NODE_APP = """\
const http = require("http");
http.createServer((req, res) => res.end("alpha\\n"))
  .listen(Number(process.env.PORT), process.env.HOST);
"""
PY_APP = """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"beta\\n")
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops("add-site alpha --domain alpha.test --components frontend")
    box.siteops("add-site beta --domain beta.test")
    commit(box, "/srv/repos/alpha", {"server.js": NODE_APP,
                                     "siteops.toml": '[frontend]\nstart = "node server.js"\n'}, "a")
    commit(box, "/srv/repos/beta", {"app.py": PY_APP, "siteops.toml":
                                    '[frontend]\nstart = "python3 app.py"\n'
                                    '[api]\nstart = "python3 app.py"\n'}, "b")
    box.siteops("deploy alpha --repo /srv/repos/alpha")
    box.siteops("deploy beta --repo /srv/repos/beta")
    return box


def audit(box, args: str = "") -> tuple[int, dict]:
    res = box.sh(f"{SRC}/bin/audit --json {args}", check=False)
    assert res.returncode in (0, 1, 2), res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == res.returncode
    return res.returncode, doc


def problems(doc: dict) -> dict[str, str]:
    return {f["id"]: f["severity"] for f in doc["findings"] if f["severity"] != "ok"}


def test_a_fresh_box_with_two_sites_audits_clean(host):
    code, doc = audit(host)
    assert (code, doc["status"], problems(doc)) == (0, "ok", {})
    assert doc["sites"] == ["alpha", "beta"] and doc["counts"]["ok"] == len(doc["findings"]) > 40
    ids = {f["id"] for f in doc["findings"]}
    for expected in ("host.ufw", "host.sshd", "host.nginx", "host.postgres.hba",
                     "host.listen.public", "site.alpha.env", "site.beta.listen",
                     "site.alpha.exposure:alpha-frontend@3100.service", "site.beta.database",
                     "site.alpha.file:/etc/nginx/sites-available/alpha.conf"):
        assert expected in ids
    text = host.sh(f"{SRC}/bin/audit").stdout
    assert text.strip().splitlines()[-1].startswith("audit OK:")


@pytest.mark.parametrize("break_it, finding, severity", [
    ("chmod 644 /srv/sites/alpha/shared/.env", "site.alpha.env", "critical"),
    ("systemctl stop beta-redis", "site.beta.unit:beta-redis.service", "critical"),
    ("systemctl stop alpha-frontend@3100", "site.alpha.unit:alpha-frontend@3100.service",
     "critical"),
    ("echo '# hand edit' >> /etc/systemd/system/alpha-frontend@.service",
     "site.alpha.file:/etc/systemd/system/alpha-frontend@.service", "warning"),
    ("sed -i 's/burst=50/burst=500/' /etc/nginx/sites-available/beta.conf",
     "site.beta.file:/etc/nginx/sites-available/beta.conf", "warning"),
    ("ln -sfn releases/gone /srv/sites/alpha/current", "site.alpha.current", "critical"),
    ("chmod 0777 /srv/sites/beta/shared/uploads", "site.beta.tree", "warning"),
])
def test_a_safe_breakage_is_found_and_fixed(host, break_it, finding, severity):
    host.sh(break_it)
    try:
        code, doc = audit(host)
        assert problems(doc) == {finding: severity}
        assert code == {"warning": 1, "critical": 2}[severity]
        f = next(f for f in doc["findings"] if f["id"] == finding)
        assert f["subject"] in ("alpha", "beta") and f["message"] and f["remedy"]
        code, doc = audit(host, "--fix")
        assert (code, problems(doc), doc["fixed"]) == (0, {}, [finding])
    finally:
        audit(host, "--fix")  # a failed assertion must not leave the breakage to later tests
    assert audit(host)[0] == 0


def test_drift_shows_a_diff_without_secrets(host):
    host.sh("sed -i 's/^maxmemory .*/maxmemory 1gb/' /etc/siteops/redis/alpha.conf")
    try:
        code, doc = audit(host)
        f = next(f for f in doc["findings"]
                 if f["id"] == "site.alpha.file:/etc/siteops/redis/alpha.conf")
        assert code == 1 and "-maxmemory 1gb" in f["diff"] and "+maxmemory 64mb" in f["diff"]
        password = host.sh("grep ^REDIS_URL /srv/sites/alpha/shared/.env").stdout.split(":")[2].split("@")[0]
        text = host.sh(f"{SRC}/bin/audit", check=False).stdout
        assert password not in json.dumps(doc) and password not in text and "maxmemory 1gb" in text
    finally:
        audit(host, "--fix")
    assert audit(host)[0] == 0


@pytest.mark.parametrize("command, port, extra", [
    ("python3 -m http.server --bind 0.0.0.0 3105", "0.0.0.0:3105", "host.listen.public"),
    ("python3 -m http.server --bind 127.0.0.1 3115", "port 3115 (not in its blocks)",
     "site.beta.ports"),  # beta's port: named in beta's findings too
])
def test_a_site_process_listening_where_it_must_not_is_critical(host, command, port, extra):
    # A process of site alpha (its unit is alpha-*) on all addresses / on beta's port.
    host.sh(f"systemd-run --unit=alpha-rogue -p User=alpha {command} && sleep 1")
    try:
        code, doc = audit(host)
        listen = next(f for f in doc["findings"] if f["id"] == "site.alpha.listen")
        assert code == 2 and listen["severity"] == "critical" and port in listen["message"]
        assert set(problems(doc)) == {"site.alpha.listen"} | ({extra} if extra else set())
        assert audit(host, "--fix")[0] == 2  # not safe to repair: left for a human
    finally:
        host.sh("systemctl stop alpha-rogue")
    assert audit(host)[0] == 0


@pytest.mark.parametrize("break_it, repair, finding", [
    ("ufw disable", "ufw --force enable", "host.ufw"),
    ("echo 'host all all 0.0.0.0/0 scram-sha-256' >> /etc/postgresql/*/main/pg_hba.conf "
     "&& systemctl reload 'postgresql@*-main'",
     "sed -i '$d' /etc/postgresql/*/main/pg_hba.conf && systemctl reload 'postgresql@*-main'",
     "host.postgres.hba"),
])
def test_host_breakage_is_critical_and_left_to_a_human(host, break_it, repair, finding):
    host.sh(break_it)
    try:
        code, doc = audit(host, "--fix")
        assert (code, problems(doc), doc["fixed"]) == (2, {finding: "critical"}, [])
    finally:
        host.sh(repair)
    assert audit(host)[0] == 0


def expected_days(box, pem: str, doc: dict) -> int:
    """Whole days from the audit's own clock reading to the certificate's notAfter."""
    end = box.sh(f"openssl x509 -noout -enddate -in {pem}").stdout.strip().partition("=")[2]
    end_t = datetime.datetime.strptime(end, "%b %d %H:%M:%S %Y %Z")
    return (end_t - datetime.datetime.strptime(doc["time"], "%Y-%m-%dT%H:%M:%SZ")).days


def test_certificates_near_expiry_and_not_served(host):
    live = "/etc/letsencrypt/live/beta.test"
    try:
        host.sh(f"mkdir -p {live} && openssl req -x509 -newkey rsa:2048 -nodes -days 5 "
                f"-subj /CN=beta.test -keyout {live}/privkey.pem -out {live}/fullchain.pem 2>/dev/null")
        host.siteops("add-site beta --domain beta.test")  # nginx now serves HTTPS with it
        code, doc = audit(host)
        assert code == 2 and problems(doc) == {"site.beta.tls.expiry": "critical"}
        # 4 days and some hours, or exactly 5 when the audit ran in the second the
        # certificate was made (both are whole seconds): derived, not assumed.
        days = expected_days(host, f"{live}/fullchain.pem", doc)
        assert days in (4, 5)
        assert f"expires in {days} days" in next(f["message"] for f in doc["findings"]
                                                 if f["id"] == "site.beta.tls.expiry")
        host.sh(f"openssl req -x509 -newkey rsa:2048 -nodes -days 15 -subj /CN=beta.test "
                f"-keyout {live}/privkey.pem -out {live}/fullchain.pem 2>/dev/null")
        code, doc = audit(host)  # renewed on disk, nginx not reloaded: still serves the old one
        assert code == 2 and problems(doc) == {"site.beta.tls.expiry": "warning",
                                               "site.beta.tls.served": "critical"}
        host.sh("systemctl reload nginx && sleep 0.5")
        code, doc = audit(host)
        assert code == 1 and problems(doc) == {"site.beta.tls.expiry": "warning"}
    finally:
        host.sh(f"rm -rf {live}")
        host.siteops("add-site beta --domain beta.test")
    assert audit(host)[0] == 0


def test_runs_are_logged_hourly_and_the_log_is_rotated(host):
    before = int(host.sh("cat /var/log/siteops/audit.jsonl 2>/dev/null | wc -l").stdout)
    assert host.sh("systemctl is-enabled siteops-audit.timer").stdout.strip() == "enabled"
    calendar = host.sh("systemctl show -p TimersCalendar siteops-audit.timer").stdout
    assert "OnCalendar=*-*-* *:00:00" in calendar, calendar  # hourly
    assert host.sh("systemctl is-active siteops-audit.timer").stdout.strip() == "active"
    host.sh("systemctl stop siteops-audit.timer")  # no run of its own while lines are counted
    try:
        counted_runs_and_rotation(host, before)
    finally:
        host.sh("systemctl start siteops-audit.timer")


def counted_runs_and_rotation(host, before):
    host.sh("systemctl start siteops-audit.service")  # the timer's job, run now
    lines = host.sh("cat /var/log/siteops/audit.jsonl").stdout.splitlines()
    assert len(lines) == before + 1 and json.loads(lines[-1])["status"] == "ok"
    assert host.sh("systemctl show -p Result siteops-audit.service").stdout.strip() == "Result=success"
    # Rotated by bootstrap's /etc/logrotate.d/siteops: the next run starts a new file.
    host.sh("logrotate -f /etc/logrotate.d/siteops")
    assert host.sh("cat /var/log/siteops/audit.jsonl.1").stdout.splitlines() == lines
    assert host.sh("test -e /var/log/siteops/audit.jsonl", check=False).returncode == 1
    host.sh("systemctl start siteops-audit.service")
    assert host.sh("stat -c '%U %a' /var/log/siteops/audit.jsonl").stdout.strip() == "root 640"
    assert len(host.sh("cat /var/log/siteops/audit.jsonl").stdout.splitlines()) == 1


def test_an_audit_that_cannot_run_exits_3(host):
    res = host.sh(f"{SRC}/bin/audit nosuch", check=False)
    assert res.returncode == 3 and "no site 'nosuch'" in res.stderr
    res = host.sh(f"{SRC}/bin/audit --bogus", check=False)
    assert res.returncode == 3
    host.sh("cp /var/lib/siteops/registry.json /tmp/r.json && echo '{' > /var/lib/siteops/registry.json")
    try:
        res = host.sh(f"{SRC}/bin/audit", check=False)
        assert res.returncode == 3 and "corrupt" in res.stderr
    finally:
        host.sh("cp /tmp/r.json /var/lib/siteops/registry.json")


def test_sites_list_show_and_doc(host):
    lines = host.sh(f"{SRC}/bin/sites list").stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "SLOT", "PORTS"]
    alpha_port = 3100 + json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)[
        "sites"]["alpha"]["live"]["offset"]  # --fix of its unit file moved it to fresh instances
    assert lines[1].split()[:5] == ["alpha", "0", f"{alpha_port},5000", "alpha.test", "frontend"]
    rows = json.loads(host.sh(f"{SRC}/bin/sites list --json").stdout)
    beta = rows[1]
    reg = json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]["beta"]
    assert beta["live_release"] == reg["live"]["release"] and beta["disk_bytes"] > 0
    assert beta["units"] == {"beta-frontend@3110.service": "active",
                             "beta-api@4010.service": "active", "beta-redis.service": "active"}
    show = host.sh(f"{SRC}/bin/sites show beta").stdout
    assert "live ports:   frontend 3110 api 4010" in show and "deploy" in show
    doc = host.sh(f"{SRC}/bin/sites doc").stdout
    assert doc.startswith("## ACTIVE SITES REGISTRY (generated)")
    assert "### Site #2: beta" in doc and "| api | 4010 | active |" in doc
    assert "| beta.test | beta | no certificate |" in doc


def test_audit_works_unchanged_from_cron(host):
    # cron's environment: PATH=/usr/bin:/bin, no HOME, no terminal.
    res = host.sh(f"env -i PATH=/usr/bin:/bin SHELL=/bin/sh {SRC}/bin/audit </dev/null", check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("audit OK:") and "\x1b[" not in res.stdout
