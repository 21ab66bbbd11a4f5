"""audit's checks over facts recorded from a real box (tests/unit/data/box-facts.json:
two deployed sites, secrets replaced), each breakage applied to a copy."""

import copy
import json
import os
from pathlib import Path

import pytest

from siteops import checks, facts, model, postgres, site_checks
from siteops.errors import CommandError
from siteops.commands import audit
from siteops.ops import audit as audit_op
from siteops.paths import Paths
from siteops.host import Host

RECORDED = json.loads((Path(__file__).parent / "data/box-facts.json").read_text())
HOST = Host(paths=Paths())
NGINX_BETA = "/etc/nginx/sites-available/beta.conf"


def findings(change=None, site_change=None):
    data = copy.deepcopy(RECORDED)
    facts, sites = data["facts"], data["registry"]["sites"]
    if change:
        change(facts)
    if site_change:
        site_change(sites)
    out = checks.host_checks(facts)
    for site in sites.values():
        out += site_checks.site_checks(HOST, model.site_from_json(site), facts)
    return out


def problems(found):
    return {f.id: f.severity for f in found if f.severity != checks.OK}


def test_the_recorded_box_is_clean():
    found = findings()
    assert problems(found) == {} and checks.exit_code(found) == 0
    assert len(found) == 79 and len({f.id for f in found}) == 79


def listen(proto, addr, port, units, programs):
    return {"proto": proto, "addr": addr, "port": port, "units": units, "programs": programs}


BREAKAGES = [
    (lambda f: f["ufw"].update(active=False), {"host.ufw": "critical"}),
    (lambda f: f["ufw"]["allowed"].append("8080/tcp"), {"host.ufw.rules": "warning"}),
    (lambda f: f.update(fail2ban=f["fail2ban"].replace("nginx-limit-req", "")), {"host.fail2ban": "critical"}),
    (lambda f: f.update(upgrades=""), {"host.upgrades": "warning"}),
    (lambda f: f["sshd"].update(passwordauthentication="yes"), {"host.sshd": "critical"}),
    (lambda f: f["sshd"].update(permitrootlogin="yes"), {"host.sshd": "critical"}),
    (lambda f: f.update(nginx_t={"ok": False, "detail": ["unknown directive"]}), {"host.nginx": "critical"}),
    (lambda f: f.update(nginx_files={"limit": 1024, "needed": 1064}), {"host.nginx.files": "critical"}),
    (lambda f: f["listeners"].append(listen("udp", "0.0.0.0", 5353, ["avahi.service"], ["avahi"])), {"host.listen.public": "critical"}),
    (lambda f: f["listeners"].append(listen("tcp", "::1", 6379, ["x.service"], ["redis-server"])),
     {}),
    (lambda f: f["postgres"]["hba"].append({"line": 9, "type": "host", "database": ["all"],
                                            "user": ["all"], "address": "0.0.0.0",
                                            "method": "scram-sha-256", "error": None}), {"host.postgres.hba": "critical"}),
    (lambda f: f["postgres"]["hba"].append({"line": 9, "type": "local", "database": ["all"],
                                            "user": ["all"], "address": None,
                                            "method": "trust", "error": None}), {"host.postgres.hba": "critical"}),
    (lambda f: f["postgres"].update(connections=85, max_connections=100), {"host.postgres.connections": "warning"}),
    (lambda f: f["postgres"].update(connections=97, max_connections=100), {"host.postgres.connections": "critical"}),
    (lambda f: f.update(certbot_hook=False), {"host.certbot": "warning"}),
    (lambda f: f["disk"].update(used_pct=85.0), {"host.disk": "warning"}),
    (lambda f: f["disk"].update(used_pct=95.0), {"host.disk": "critical"}),
    (lambda f: f["sites"]["alpha"]["env"].update(mode=0o644), {"site.alpha.env": "critical"}),
    (lambda f: f["sites"]["beta"]["tree"]["/srv/sites/beta/shared/logs"].update(uid=1002), {"site.beta.tree": "warning"}),
    (lambda f: f["sites"]["alpha"]["user"].update(shell="/bin/bash"), {"site.alpha.user": "critical"}),
    (lambda f: f["units"]["beta-api@4010.service"].update(active="failed"), {"site.beta.unit:beta-api@4010.service": "critical"}),
    (lambda f: f["units"]["alpha-redis.service"].update(enabled="not enabled"), {"site.alpha.unit:alpha-redis.service": "critical"}),
    (lambda f: f["exposure"].update({"alpha-redis.service": 4.2}), {"site.alpha.exposure:alpha-redis.service": "warning"}),
    (lambda f: f["listeners"].append(listen("tcp", "0.0.0.0", 3101, ["alpha-frontend@3100.service"],
                                            ["node"])), {"site.alpha.listen": "critical", "host.listen.public": "critical"}),
    (lambda f: f["listeners"].append(listen("tcp", "127.0.0.1", 3110, ["alpha-x.service"],
                                            ["node"])), {"site.alpha.listen": "critical",
                                                         "site.beta.ports": "critical"}),
    # Another site's process (or one outside any unit) on a site's port, named.
    (lambda f: f["listeners"].append(listen("tcp", "127.0.0.1", 3101, ["beta-rogue.service"],
                                            ["python3"])), {"site.alpha.ports": "critical",
                                                            "site.beta.listen": "critical"}),
    (lambda f: f["listeners"].append(listen("tcp", "127.0.0.1", 5019, [], ["nc"])),
     {"site.beta.ports": "critical"}),
    (lambda f: f.update(nftables=None), {"host.nftables": "critical"}),
    # A VM (not a container): the running kernel against the baseline.
    (lambda f: f.update(sysctl={"want": {"kernel.kptr_restrict": "2", "net.x": "1"},
                                "have": {"kernel.kptr_restrict": "2", "net.x": None}}), {}),
    (lambda f: f.update(sysctl={"want": {"kernel.kptr_restrict": "2"},
                                "have": {"kernel.kptr_restrict": "0"}}),
     {"host.sysctl": "warning"}),
    (lambda f: f.update(hardening={"drift": ["/etc/modprobe.d/siteops.conf"],
                                   "unloaded_rules": None}), {"host.hardening": "warning"}),
    (lambda f: f.update(hardening={"drift": [], "unloaded_rules": ["identity"]}),
     {"host.hardening": "warning"}),
    (lambda f: f.update(hardening={"drift": [], "unloaded_rules": []}), {}),
    # Backups: an unreadable repository, a stopped timer, old or missing snapshots.
    (lambda f: f.update(backup={"error": "wrong password or no key found", "latest": {}}),
     {"host.backup": "critical"}),
    (lambda f: f["units"]["siteops-backup.timer"].update(active="inactive"),
     {"host.backup": "warning"}),
    (lambda f: f["backup"]["latest"].update(alpha="2026-11-24T18:00:00Z"),
     {"site.alpha.backup": "warning"}),
    (lambda f: f["backup"]["latest"].update(beta="2026-11-23T20:00:00Z"),
     {"site.beta.backup": "critical"}),
    (lambda f: f.update(time="2026-11-28T20:49:35Z", backup={"error": None, "latest": {}}),
     {"site.alpha.backup": "critical", "site.beta.backup": "critical"}),
    (lambda f: f.update(nftables=f["nftables"].replace("siteops site beta\"", "x\"")),
     {"host.nftables": "critical"}),
    # A host-level drain file edited by hand: one host finding, whatever the sites.
    (lambda f: f["host_files"].update(expected={"/etc/rsyslog.d/50-siteops.conf": "a\n"},
                                      actual={"/etc/rsyslog.d/50-siteops.conf": "b\n"}),
     {"host.file:/etc/rsyslog.d/50-siteops.conf": "warning"}),
    # beta's ports given to another uid (a restore that gave its user a new one).
    (lambda f: f.update(nftables=f["nftables"].replace("1002 . ", "1009 . ")),
     {"host.nftables": "critical"}),
    (lambda f: f["sites"]["alpha"]["current"].update(target_exists=False), {"site.alpha.current": "critical"}),
    (lambda f: f["sites"]["beta"]["releases"].extend(f"2026010{i}T000000Z" for i in range(8)), {"site.beta.releases": "warning"}),
    (lambda f: f["postgres"]["databases"].update(beta=True), {"site.beta.database": "critical"}),
    (lambda f: f["postgres"]["databases"].pop("alpha"), {"site.alpha.database": "critical"}),
    (lambda f: f["sites"]["beta"]["actual"].update({NGINX_BETA: None}), {f"site.beta.file:{NGINX_BETA}": "warning"}),
    # A site's .env leading to a neighbour's Redis, or to its own with the wrong password.
    (lambda f: f["sites"]["alpha"]["urls"]["REDIS_URL"].update(
        have="redis://default:********@127.0.0.1:5010/0", home=False, auth=False),
     {"site.alpha.env.urls": "critical"}),
    (lambda f: f["sites"]["beta"]["urls"]["DATABASE_URL"].update(auth=False),
     {"site.beta.env.urls": "critical"}),
    (lambda f: f["sites"]["beta"]["urls"]["DATABASE_URL"].update(have=None, home=False),
     {"site.beta.env.urls": "critical"}),
    # nginx's enabled link gone: the site is not served; audit --fix renders it.
    (lambda f: f["sites"]["alpha"]["missing_parts"].append("/etc/nginx/sites-enabled/alpha.conf"),
     {"site.alpha.parts": "critical"}),
    # Redis not answering: its unit finding says so; the URL itself is right.
    (lambda f: f["sites"]["beta"]["urls"]["REDIS_URL"].update(auth=None), {}),
    # A line added to the tenant keys file by hand: access siteops did not give.
    (lambda f: f["access"].update(file=f["access"]["file"] + "ssh-ed25519 AAAAC3Nza x\n"),
     {"host.ssh.tenant_keys": "critical"}),
    (lambda f: f["access"].update(file=None, last_used={"SHA256:x": None}),
     {"host.ssh.tenant_keys": "critical"}),
    # A tenant key copied into deploy's own file has no restriction there.
    (lambda f: f["access"].update(tenant_in_operator=["SHA256:x"]),
     {"host.ssh.deploy_keys": "critical"}),
    (lambda f: f["access"].update(unknown_operator=["SHA256:y eve"]),
     {"host.ssh.deploy_keys": "warning"}),
    # The fleet's log host: a queue towards it that has delivered nothing for an
    # hour; a site drain's failing is the site's finding, not this one.
    (lambda f: f.update(log_host="big", drains_failing={"alpha.fleet": {"waiting": 5,
                                                                        "since": 0}}),
     {"host.logs.upload": "warning"}),
    (lambda f: f.update(log_host="big", drains_failing={"alpha-0badcafe": {"waiting": 5,
                                                                           "since": 0}}),
     {}),
    # The log host's receiver listens on its opened port: not a finding.
    (lambda f: (f["ufw"].update(opened=["22/tcp", "80/tcp", "443/tcp", "6514/tcp"],
                                allowed=f["ufw"]["allowed"] + ["6514/tcp"]),
                f["listeners"].append(listen("tcp", "0.0.0.0", 6514, ["rsyslog.service"],
                                             ["rsyslogd"]))), {}),
    (lambda f: f["listeners"].append(listen("tcp", "0.0.0.0", 6514, ["rsyslog.service"],
                                            ["rsyslogd"])), {"host.listen.public": "critical"}),
]


@pytest.mark.parametrize("change, expected", BREAKAGES)
def test_each_breakage_has_its_finding_and_exit_code(change, expected):
    found = findings(change)
    assert problems(found) == expected
    assert checks.exit_code(found) == max((checks.RANK[s] for s in expected.values()), default=0)
    for f in found:
        if f.id in expected:
            assert f.message and f.remedy


def test_fixable_findings_name_their_repair():
    fixes = {f.id: f.fix for f in findings(lambda f: (
        f["sites"]["alpha"]["env"].update(mode=0o644),
        f["units"]["alpha-redis.service"].update(active="inactive"),
        f["sites"]["alpha"]["current"].update(target_exists=False),
        f["ufw"].update(active=False)))}
    assert fixes["site.alpha.env"] == "env" and fixes["site.alpha.current"] == "current"
    assert fixes["site.alpha.unit:alpha-redis.service"] == "unit" and fixes["host.ufw"] is None


def test_drift_diff_is_unified_and_never_shows_secrets():
    redis_conf = "/etc/siteops/redis/beta.conf"

    def edit(f):
        text = f["sites"]["beta"]["actual"][redis_conf]
        f["sites"]["beta"]["actual"][redis_conf] = text.replace("maxmemory 64mb", "maxmemory 1gb") \
            .replace("requirepass PASSWORD-of-beta", "requirepass REDIS_URL-of-beta")
    f = next(f for f in findings(edit) if f.id == f"site.beta.file:{redis_conf}")
    assert f.severity == "warning" and f.fix == "render"
    assert "-maxmemory 1gb\n" in f.diff and "+maxmemory 64mb\n" in f.diff
    assert "REDIS_URL-of-beta" not in f.diff and "-requirepass ********" in f.diff


@pytest.mark.parametrize("days, severity", [(30, "ok"), (20, "warning"), (6, "critical")])
def test_tls_expiry_thresholds(days, severity):
    import datetime
    now = datetime.datetime(2026, 11, 25, 12, 0, 0)
    end = (now + datetime.timedelta(days=days, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def cert(f):
        f["time"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        f["sites"]["beta"]["tls"] = {"not_after": end, "disk_sha256": "ab", "served_sha256": "ab"}
    found = {f.id: f for f in findings(cert)}
    assert found["site.beta.tls.expiry"].severity == severity
    assert found["site.beta.tls.served"].severity == "ok"


def test_a_served_certificate_that_differs_is_critical():
    def cert(f):
        f["sites"]["beta"]["tls"] = {"not_after": "2030-12-31T00:00:00Z", "disk_sha256": "ab",
                                     "served_error": "handshake failed"}
    found = {f.id: f for f in findings(cert)}
    assert found["site.beta.tls.served"].severity == "critical"
    assert "handshake failed" in found["site.beta.tls.served"].message


def test_json_document_and_text_report():
    found = findings(lambda f: (f["disk"].update(used_pct=85.0),
                                f["sites"]["alpha"]["env"].update(mode=0o644)))
    sites = [model.site_from_json(s) for s in RECORDED["registry"]["sites"].values()]
    doc = json.loads(json.dumps(audit_op.document(found, ["site.x"], sites, "2026-11-26T09:00:00Z")))
    assert set(doc) == {"version", "time", "host", "status", "exit_code", "counts", "sites",
                        "fixed", "findings"}
    assert (doc["status"], doc["exit_code"], doc["counts"]) == (
        "critical", 2, {"ok": 77, "warning": 1, "critical": 1})
    first = next(f for f in doc["findings"] if f["id"] == "site.alpha.env")
    assert set(first) >= {"id", "severity", "subject", "message", "remedy"}
    lines = audit.text_report(found, [])
    assert lines[0].startswith("CRITICAL site.alpha.env: .env is 0644")
    assert lines[2].startswith("WARNING  host.disk: disk 85.0% used")
    assert lines[-1] == "audit CRITICAL: 79 checks, 77 ok, 1 warning(s), 1 critical"


RENEWAL = ("version = 2.1.0\narchive_dir = /etc/letsencrypt/archive/shop\n"
           "cert = /etc/letsencrypt/live/shop/cert.pem\n[renewalparams]\n"
           "authenticator = webroot\nwebroot_path = /var/www/siteops-acme,\n")


@pytest.mark.parametrize("conf, problem", [
    (RENEWAL, None),
    (None, "certbot has no renewal config for it"),
    (RENEWAL.replace("webroot", "nginx"), "not for the webroot method"),
    (RENEWAL.replace("/live/shop/", "/live/other/"), "points at another certificate"),
])
def test_a_certificate_certbot_cannot_renew_is_critical(conf, problem):
    f = site_checks.renewal_check(model.Site("shop", 0, tls=model.Tls()), conf)
    if problem is None:
        assert f.severity == checks.OK
    else:
        assert f.severity == checks.CRITICAL and problem in f.message and "tls shop" in f.remedy


def test_tenant_keys_are_listed_and_one_unused_for_90_days_is_a_warning():
    key = {"fingerprint": "SHA256:" + "a" * 43, "key": "ssh-ed25519 AAAA", "label": "alice",
           "role": "read", "added": "2026-08-01T00:00:00Z"}

    def give(sites):
        sites["beta"]["keys"] = [key]
    fresh = lambda f: f["access"]["last_used"].update({key["fingerprint"]: "2026-11-20T10:00:00Z"})  # noqa: E731
    found = {f.id: f for f in findings(fresh, give)}
    assert found["site.beta.access"].severity == "ok"
    assert found["site.beta.access"].message == "tenant keys: alice (read, last used 2026-11-20)"
    assert found["site.alpha.access"].message == "tenant keys: none"
    stale = {f.id: f for f in findings(None, give)}["site.beta.access"]
    assert stale.severity == "warning" and "alice SHA256:aaa" in stale.message, stale


def test_a_site_left_in_maintenance_is_a_warning():
    def on(sites):
        sites["beta"]["maintenance"] = {"message": "db", "retry_after": 60,
                                        "since": "2026-11-30T10:00:00Z", "by": "root"}
    found = {f.id: f for f in findings(None, on)}
    assert found["site.beta.maintenance"].severity == "warning"
    assert "since 2026-11-30T10:00:00Z" in found["site.beta.maintenance"].message
    assert found["site.alpha.maintenance"].severity == "ok"


def test_facts_that_wait_on_commands_wait_side_by_side():
    import threading
    first, second = threading.Event(), threading.Event()

    def a():  # each needs the other running at the same time
        first.set()
        return second.wait(5)

    def b():
        second.set()
        return first.wait(5)
    assert facts.started({"a": a, "b": b})() == {"a": True, "b": True}

    def broken():
        raise CommandError(["restic"], 1, "Fatal")
    joined = facts.started({"ok": lambda: 1, "broken": broken})
    with pytest.raises(CommandError):
        joined()


def test_password_checks_are_remembered_until_the_env_or_the_verifier_changes(root, monkeypatch):
    """audit's SCRAM check (1.5 ms a site) is done again only when what its
    answer depends on changed; the memo holds nothing derived from a password."""
    calls = []
    real = postgres.verifier_matches
    monkeypatch.setattr(postgres, "verifier_matches",
                        lambda v, p: calls.append(p) or real(v, p))
    host = Host(paths=Paths(root), dry_run=False)
    (root / "var/lib/siteops").mkdir(parents=True)
    env = root / "env"
    env.write_text("DATABASE_URL=postgresql://shop:secret-one@localhost:5432/shop\n")
    verifier = postgres.scram_verifier("secret-one")

    def check() -> bool:
        checks = facts.PasswordChecks(host)
        answer = checks.matches("shop", os.lstat(env), verifier, "secret-one")
        checks.save()
        return answer
    assert check() and check() and calls == ["secret-one"]  # the second from memory
    saved = (root / "var/lib/siteops/password-checks.json").read_text()
    assert "secret" not in saved and verifier.split("$")[2] not in saved
    env.write_text("DATABASE_URL=postgresql://shop:secret-one@localhost:5432/shop\n")
    assert check() and len(calls) == 2  # the .env was written again: asked again
    verifier = postgres.scram_verifier("secret-one")  # a new salt: ALTER ROLE
    assert check() and len(calls) == 3
    assert not facts.PasswordChecks(host).matches("shop", None, verifier, "other")
