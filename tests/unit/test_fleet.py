"""Several hosts: the inventory's addresses, the pinned known_hosts file, the
SSH command line, the suite's version, and the fleet views' merging."""

import json

import pytest

from fakes import make_host
from siteops import fleet
from siteops.commands import audit, hosts, sites
from siteops.errors import UsageError
from siteops.paths import REPO

KEY_LINE = ("192.0.2.2 ssh-ed25519 "
            "AAAAC3NzaC1lZDI1NTE5AAAAIHx5bX6rOwdQpeZ7Sq8z3I1yqY2o0pU0w4mUo0QvB8Qn")


@pytest.mark.parametrize("url, want", [
    ("ssh://root@192.0.2.2", ("root", "192.0.2.2", 22)),
    ("ssh://root@host.example.com:2222", ("root", "host.example.com", 2222)),
    ("ssh://192.0.2.2", ("root", "192.0.2.2", 22)),
    ("ssh://ops@[2001:db8::1]:22", ("ops", "[2001:db8::1]", 22)),
])
def test_addresses(url, want):
    r = fleet.parse_url("b", url, None)
    assert (r.user, r.address, r.port) == want


@pytest.mark.parametrize("url", ["http://x", "ssh://root@x;id", "ssh://root@x:99999",
                                 "ssh://-oProxyCommand=id", "root@x", "ssh://root@x:22/path"])
def test_bad_addresses_are_refused(url):
    with pytest.raises(UsageError):
        fleet.parse_url("b", url, None)


def test_ssh_trusts_only_the_pinned_key(root):
    host, _ = make_host(root)
    r = fleet.Remote("b", "root", "192.0.2.2", 2222, "/root/.ssh/fleet")
    argv = fleet.ssh_argv(host, r, ["/opt/siteops/bin/audit", "--json"])
    joined = " ".join(argv)
    assert argv[:3] == ["ssh", "-F", "/dev/null"] and "StrictHostKeyChecking=yes" in joined
    assert f"UserKnownHostsFile={root}/etc/siteops/fleet_known_hosts" in joined
    assert "GlobalKnownHostsFile=/dev/null" in joined and "IdentitiesOnly=yes" in joined
    assert argv[-4:] == ["--", "192.0.2.2", "/opt/siteops/bin/audit", "--json"]
    with pytest.raises(AssertionError):  # nothing the remote shell would read as syntax
        fleet.ssh_argv(host, r, ["audit", "; id"])


@pytest.mark.parametrize("stderr, said", [
    ("ssh: connect to host 192.0.2.2 port 2222: Connection refused\n",
     "is unreachable: ssh: connect to host 192.0.2.2 port 2222: Connection refused"),
    ("root@192.0.2.2: Permission denied (publickey).\n", "is unreachable: root@192.0.2.2: "
                                                        "Permission denied (publickey)."),
    # The remote command killed by a signal: ssh exits 255 and says nothing of its own.
    ("", "answered, but the command there ended without an exit status (killed by a signal"),
    ("restoring shop\n", "answered, but the command there ended without an exit status "
                         "(killed by a signal, or its connection dropped): restoring shop")])
def test_a_failed_ssh_is_told_apart_from_a_remote_command_killed(root, stderr, said):
    host, _ = make_host(root, [(["ssh"], 255, "", stderr)])
    r = fleet.Remote("b", "root", "192.0.2.2", 2222, None)
    with pytest.raises(fleet.Unreachable) as failed:
        fleet.run(host, r, ["/opt/siteops/bin/audit"])
    assert f"host b ({r.url}) {said}" in str(failed.value)


def test_pinning_replaces_only_that_hosts_line(root):
    host, _ = make_host(root, dry_run=False)
    (root / "etc/siteops").mkdir(parents=True)
    b = fleet.Remote("b", "root", "192.0.2.2", 22)
    c = fleet.Remote("c", "root", "198.51.100.2", 2222)
    fleet.pin(host, b, KEY_LINE)
    fleet.pin(host, c, KEY_LINE.replace("192.0.2.2", "[198.51.100.2]:2222"))
    fleet.pin(host, b, KEY_LINE)
    lines = (root / "etc/siteops/fleet_known_hosts").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == ["[198.51.100.2]:2222", "192.0.2.2"]
    fleet.unpin(host, c)
    assert (root / "etc/siteops/fleet_known_hosts").read_text().split()[0] == "192.0.2.2"
    assert fleet.key_fingerprint(KEY_LINE).startswith("SHA256:")


def test_the_version_is_a_digest_of_the_suites_files(tmp_path):
    for part in fleet.SUITE_PARTS:
        (tmp_path / part).mkdir()
    (tmp_path / "bin/x").write_text("a")
    first = fleet.version(tmp_path)
    (tmp_path / "lib/__pycache__").mkdir()
    (tmp_path / "lib/__pycache__/y.pyc").write_text("cache")
    assert fleet.version(tmp_path) == first  # caches do not count
    (tmp_path / "bin/x").write_text("b")
    assert fleet.version(tmp_path) != first
    assert len(fleet.version(REPO)) == 16


def test_a_host_that_fails_does_not_stop_the_others(root):
    host, _ = make_host(root)
    remotes = [fleet.Remote(n, "root", f"192.0.2.{i}", 22) for i, n in enumerate("bcd", 2)]

    def task(r):
        if r.name == "c":
            raise fleet.Unreachable("host c is unreachable: timed out")
        return {"doc": [r.name]}
    out = fleet.each(host, remotes, task, 5)
    assert out["b"] == {"doc": ["b"]} and out["d"] == {"doc": ["d"]}
    assert out["c"]["error"] == "host c is unreachable: timed out"


def doc(code, findings=()):
    return {"status": ["ok", "warning", "critical"][code], "exit_code": code,
            "counts": {"ok": 1, "warning": int(code == 1), "critical": int(code == 2)},
            "findings": list(findings)}


def test_the_fleets_audit_is_its_worst_host_and_an_unreachable_one_is_critical(root, monkeypatch,
                                                                                capsys):
    host, _ = make_host(root)
    args = audit.build_parser().parse_args(["--all-hosts", "--json"])
    warn = {"id": "host.disk", "severity": "warning", "message": "disk 85% used"}
    monkeypatch.setattr(fleet, "gather", lambda *a: ({"local": doc(0), "b": doc(1, [warn])}, {}))
    assert audit.fleet_report(host, doc(0), args) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "warning"
    monkeypatch.setattr(fleet, "gather", lambda *a: ({"local": doc(0)}, {"c": "host c: no"}))
    args.json = False
    assert audit.fleet_report(host, doc(0), args) == 2
    out = host.out.getvalue()
    assert "c                CRITICAL  host c: no" in out and "1 unreachable" in out


def test_fleet_rows_carry_their_host(root, monkeypatch):
    host, _ = make_host(root)
    monkeypatch.setattr(fleet, "gather", lambda *a: (
        {"local": [{"name": "a"}], "b": [{"name": "x"}, {"name": "y"}]}, {"c": "down"}))
    rows, errors = sites.fleet_rows(host, [{"name": "a"}], ["sites", "list"], 5)
    assert [(r["host"], r["name"]) for r in rows] == [("local", "a"), ("b", "x"), ("b", "y")]
    assert errors == {"c": "down"}
    assert sites.table(("NAME",), [("a",), ("x",)], rows[:2])[0].split() == ["HOST", "NAME"]


def test_hosts_refuses_options_that_do_not_go_with_the_action(root):
    host, _ = make_host(root)
    assert hosts.main(["list", "--fingerprint", "SHA256:x", "--dry-run"], host=host) == 2
