"""outdated: which mappings are replaced code, which service a process is
in, which site a unit is, and what audit says (the box tier replaces files
under running processes for real)."""

import pytest

import test_checks
from siteops import outdated

MAPS = """\
55d0c000-55d0d000 r--p 00000000 08:01 1234   /usr/sbin/nginx (deleted)
7f00-7f01 r-xp 00000000 08:01 99   /usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)
7f01-7f02 r-xp 00000000 08:01 98   /usr/lib/x86_64-linux-gnu/libc.so.6
7f02-7f03 rw-s 00000000 00:05 7    /memfd:pool (deleted)
7f03-7f04 rw-s 00000000 00:05 8    /dev/shm/sem.x (deleted)
7f04-7f05 r--p 00000000 08:01 9    /tmp/cache file (deleted)
7f05-7f06 r--p 00000000 08:01 10   /usr/share/with space/a b.so (deleted)
7ffd-7ffe rw-p 00000000 00:00 0    [stack]
7ffe-7fff r--p 00000000 00:00 0
"""


def test_replaced_programs_and_libraries_are_found_and_nothing_else():
    assert outdated.replaced(MAPS) == {"/usr/sbin/nginx",
                                       "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                                       "/usr/share/with space/a b.so"}


@pytest.mark.parametrize("cgroup, unit", [
    ("0::/system.slice/nginx.service\n", "nginx.service"),
    ("0::/siteops.slice/siteops-shop.slice/shop-frontend@3100.service\n",
     "shop-frontend@3100.service"),
    ("0::/init.scope\n", None),
    ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("12:pids:/x\n", None),
])
def test_a_process_belongs_to_the_service_of_its_cgroup(cgroup, unit):
    assert outdated.unit_of(cgroup) == unit


@pytest.mark.parametrize("unit, site", [
    ("shop-frontend@3100.service", "shop"), ("shop-worker@mail-1-0.service", "shop"),
    ("shop-redis.service", "shop"), ("nginx.service", None), ("postgresql@15-main.service", None),
    ("siteops-build-shop.service", None),
])
def test_units_are_told_by_their_site(unit, site):
    assert outdated.site_of(unit) == site


def test_a_tree_of_processes_is_scanned_by_service(tmp_path):
    for pid, cgroup, maps in (("1", "0::/init.scope", MAPS),
                              ("20", "0::/system.slice/nginx.service", MAPS),
                              ("21", "0::/system.slice/nginx.service", ""),
                              ("30", "0::/system.slice/cron.service", "7f-8f r-xp 0 0:0 1 /usr/bin/x")):
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cgroup").write_text(cgroup + "\n")
        (tmp_path / pid / "maps").write_text(maps)
    (tmp_path / "self").mkdir()
    assert outdated.scan(tmp_path) == {"nginx.service": [
        "/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/sbin/nginx", "/usr/share/with space/a b.so"]}


def test_audit_names_each_service_running_replaced_code():
    found = {f.id: f for f in test_checks.findings(lambda f: f.update(outdated={
        "nginx.service": ["/usr/sbin/nginx"],
        "shop-frontend@3100.service": ["/usr/lib/x86_64-linux-gnu/libssl.so.3"]}))}
    f = found["host.outdated"]
    assert f.severity == "warning" and "2 service(s)" in f.message
    assert "nginx.service (nginx)" in f.message and "(libssl.so.3)" in f.message


def test_restart_waits_for_the_old_instances_and_never_the_new(root, monkeypatch):
    """A site with instances kept warm at the offset its restart moves to:
    only the instances it moved away from are waited for, not the new ones."""
    import json
    from fakes import CHANGES, make_host, planned_commands
    from siteops import instances, model
    from siteops.commands import outdated as command
    r0, r1 = "20261125T200000Z", "20261125T201000Z"
    site = {"name": "shop", "slot": 0, "state": "ready", "domains": ["shop.test"],
            "components": ["frontend"], "ports": {"frontend": 3100, "redis": 5000},
            "live": {"release": r1, "offset": 1}, "warm": {"release": r0, "offset": 0},
            "releases": {r0: {"result": "ok"}, r1: {"result": "ok"}}}
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(
        json.dumps({"version": 2, "sites": {"shop": site}}))
    monkeypatch.setattr(instances, "restart", lambda host, entry, reason: entry.copy(
        live=model.Live(r1, 0), warm=None))  # as the switch leaves it: onto the warm offset
    host, _ = make_host(root, CHANGES, dry_run=False)
    assert command.restart(host, {"shop-frontend@3101.service": ["/usr/lib/libssl.so.3"]}) == []
    assert planned_commands(host) == ["systemctl stop shop-frontend@3101.service"]
