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
