"""Log drains: URLs and CA files checked before anything changes, the
rsyslog files a registry renders, and ensure's plan (checked together,
written, rsyslog restarted once; nothing at all without drains; a stale
file removed; a restart left due by a stopped run carried out)."""

import json
import re
import time

import pytest

from fakes import make_host, planned_commands
from siteops import drains, model, site_checks
from siteops.commands import logs
from siteops.errors import UsageError
from siteops.model import Drain, Site

URL = "syslog+tls://logs.example.com:6514"


def site(*urls: str, name: str = "shop") -> Site:
    return Site(name, 1, domains=[f"{name}.test"], components=["frontend"],
                drains=[Drain(u, "PEM\n" if u == URL else None) for u in urls])


@pytest.mark.parametrize("url, plain, why", [
    ("ftp://logs.example.com:6514", False, "a drain is syslog+tls://HOST:PORT"),
    ("syslog+tls://logs.example.com", False, "lacks the port"),
    ("syslog+tls://:6514", False, "lacks the host"),
    ("syslog+tls://logs.example.com:99999", False, "out of range"),
    ("syslog+tls://u:p@logs.example.com:6514", False, "no user or password"),
    ("syslog+tls://logs.example.com:6514/x", False, "nothing after the port"),
    ("syslog+tls://logs.example.com:6514?a=1", False, "nothing after the port"),
    ('syslog+tls://a"b.example:6514', False, "not a host name"),
    ("syslog+tls://-a.example:6514", False, "not a host name"),
    ("syslog://10.0.0.5:514", False, "pass --plain"),
    (URL, True, "--plain is for syslog://"),
])
def test_a_bad_url_is_refused(url, plain, why):
    with pytest.raises(UsageError, match=re.escape(why)):
        drains.parse_url(url, plain)


def test_good_urls():
    assert drains.parse_url(URL) == drains.Target(True, "logs.example.com", 6514)
    assert drains.parse_url("syslog://10.0.0.5:514", plain=True) == \
        drains.Target(False, "10.0.0.5", 514)
    assert drains.parse_url("syslog+tls://[2001:db8::1]:6514").host == "2001:db8::1"


def test_a_ca_file_must_be_a_certificate_and_no_key(root):
    host, _ = make_host(root)
    with pytest.raises(UsageError, match="not a PEM certificate"):
        drains.check_ca(host, "hello\n")
    with pytest.raises(UsageError, match="private key"):
        drains.check_ca(host, "-----BEGIN CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\n")


def test_files_name_each_drain_stably_and_only_for_sites_with_drains(root):
    host, _ = make_host(root)
    assert drains.files(host, [site()]) == {}
    both = drains.files(host, [site(URL, "syslog://10.0.0.5:514"), site(name="blog")])
    conf = both[host.paths.rsyslog_site("shop")]
    assert set(both) == {host.paths.rsyslog_shared, host.paths.rsyslog_site("shop"),
                         drains.ca_path(host, "shop", Drain(URL)), host.paths.logrotate_drains}
    assert conf.count("action(") == 2 and "StreamDriverMode=\"1\"" in conf
    # A drain keeps its queue's name whatever is added or removed beside it.
    alone = drains.files(host, [site("syslog://10.0.0.5:514")])[host.paths.rsyslog_site("shop")]
    qname = f'queue.filename="siteops-{drains.drain_id("shop", "syslog://10.0.0.5:514")}"'
    assert qname in conf and qname in alone
    # The file name's field: the logs directory's depth under this root.
    logs = host.paths.of("shop").logs
    assert f"field($!metadata!filename, 47, {len(logs.parts) + 1})" in conf


def test_a_sites_own_drain_files_and_the_hosts_are_apart(root):
    """audit compares each site's own files per site and the shared ones once
    for the host: a hand-edited shared file is one host finding, not one a site."""
    host, _ = make_host(root)
    shop, blog = site(URL), site(name="blog")
    own = drains.site_files(host, shop, None, "web1")
    assert set(own) == {host.paths.rsyslog_site("shop"), drains.ca_path(host, "shop", Drain(URL))}
    assert drains.site_files(host, blog, None, "web1") == {}
    shared = drains.host_files(host, [shop, blog], None, "web1")
    assert set(shared) == {host.paths.rsyslog_shared, host.paths.logrotate_drains}
    assert drains.files(host, [shop, blog], "web1") == {**own, **shared}
    assert drains.host_files(host, [blog], None, "web1") == {}


def rsyslog_rules():
    return [(["dpkg-query"], 0, "rsyslog installed\nrsyslog-gnutls installed\n"),
            (["systemctl"], 0, ""), (["rsyslogd"], 0, ""), (["openssl"], 0, "")]


def test_ensure_without_any_drain_does_nothing(root):
    host, runner = make_host(root, rsyslog_rules(), dry_run=False)
    assert drains.ensure(host, [site(), site(name="blog")]) is False
    assert runner.calls == [] and host.actions == []


def test_ensure_checks_everything_together_then_writes_and_restarts_once(root):
    host, runner = make_host(root, rsyslog_rules(), dry_run=False)
    assert drains.ensure(host, [site(URL)]) is True
    check = next(c for c in runner.calls if c[0] == "rsyslogd")
    assert check[:2] == ["rsyslogd", "-N1"]
    assert planned_commands(host) == ["systemctl enable --quiet rsyslog",
                                      "systemctl restart rsyslog"]
    assert (root / "etc/rsyslog.d/60-siteops-shop.conf").read_text().startswith("# Managed")
    assert not drains.pending_marker(host).exists()
    # Again: nothing changed, nothing run.
    runner.calls.clear()
    host.actions.clear()
    assert drains.ensure(host, [site(URL)]) is False and runner.calls == []
    # The drain gone: its files removed, rsyslog restarted.
    assert drains.ensure(host, [site()]) is True
    assert not (root / "etc/rsyslog.d/60-siteops-shop.conf").exists()
    assert not (root / "etc/rsyslog.d/50-siteops.conf").exists()
    assert not (root / "etc/logrotate.d/siteops-log-drains").exists()
    assert list((root / "etc/siteops/drains").iterdir()) == []


def test_a_restart_left_due_by_a_stopped_run_is_carried_out(root):
    host, runner = make_host(root, rsyslog_rules(), dry_run=False)
    drains.ensure(host, [site(URL)])
    host.write(drains.pending_marker(host), "due\n", 0o600)
    host.actions.clear()
    assert drains.ensure(host, [site(URL)]) is True
    assert planned_commands(host)[-1] == "systemctl restart rsyslog"
    assert not drains.pending_marker(host).exists()


def test_a_failed_check_writes_no_configuration(root):
    rules = [(["rsyslogd"], 1, "", "error during parsing file x, line 3: bad")] + rsyslog_rules()
    host, runner = make_host(root, rules, dry_run=False)
    with pytest.raises(Exception, match="fails `rsyslogd`'s check"):
        drains.ensure(host, [site(URL)])
    assert not (root / "etc/rsyslog.d/60-siteops-shop.conf").exists()
    assert "systemctl restart rsyslog" not in planned_commands(host)


def test_drain_list_and_bad_input_through_the_command(root, capsys):
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(
        {"version": 2, "sites": {"shop": model.to_json(site(URL))}}))
    host, runner = make_host(root, rsyslog_rules())
    assert logs.main(["shop", "drain", "list", "--json"], host) == 0
    assert json.loads(capsys.readouterr().out)[0]["url"] == URL
    assert logs.main(["shop", "drain", "add", "ftp://x:1", "--dry-run"], host) == 2
    assert logs.main(["shop", "drain", "remove", "--dry-run"], host) == 2
    assert "needs the collector's URL" in capsys.readouterr().err
    assert host.actions == []


def stats_line(at: float, drain: str, size: int, enqueued: int) -> str:
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(at))
    return (f'{stamp}: {{ "name": "siteops-{drain} queue", "origin": "core.queue", '
            f'"size": {size}, "enqueued": {enqueued}, "full": 0 }}\n'
            f'{stamp}: {{ "name": "siteops-{drain}", "origin": "core.action", "processed": 9 }}\n')


def test_a_drain_that_delivered_nothing_for_an_hour_while_records_waited_is_failing(root):
    host, _ = make_host(root)
    now = time.time()
    lines = []
    for minute in range(70, -1, -1):
        at = now - minute * 60
        lines.append(stats_line(at, "shop-aaaa", 5 + (70 - minute), 100 + (70 - minute)))  # down
        lines.append(stats_line(at, "shop-bbbb", 0, 100 + 70 - minute))         # delivers all
        lines.append(stats_line(at, "blog-cccc", 3, 100 + (70 - minute) * 2))   # slow, delivers
        lines.append(stats_line(at, "new-dddd", 4, 4) if minute < 10 else "")   # down 10 min
        lines.append(stats_line(at, "shop.fleet", 2, 2))      # the fleet's log host, down
        lines.append(stats_line(at, "fleet.actions", 0, 9))   # delivers
    host.paths.drain_stats.parent.mkdir(parents=True)
    host.paths.drain_stats.write_text("garbage line\n" + "".join(lines))
    found = drains.failing(host, now)
    assert set(found) == {"shop-aaaa", "shop.fleet"} and found["shop-aaaa"]["waiting"] == 75
    assert drains.failing(host, now + 3 * 3600) == {}  # nothing read for hours: no verdict


def test_audit_warns_of_a_failing_drain_only():
    shop = site(URL, "syslog://10.0.0.5:514")
    bad = drains.drain_id("shop", URL)
    finding = site_checks.drain_check(shop, {bad: {"waiting": 75, "since": 0}})
    assert finding.severity == "warning" and URL in finding.message and "75 records" in finding.message
    assert "10.0.0.5" not in finding.message
    assert site_checks.drain_check(shop, {"blog-1234": {"waiting": 1, "since": 0}}).severity == "ok"
