"""Several hosts: three booted machines (Debian 12 and 13), a the operator's,
b and c each joined to a by a private link of the tests' own (no route to
the host's network or anywhere else), SSH between them with a key the test
generates. The inventory, pinned host keys and the fleet views."""

import json
import os
import time

import pytest

from machine import Box, build_image, link

B, C = "192.0.2.2", "198.51.100.2"
SUITES = os.environ.get("SITEOPS_BOX_SUITES", "bookworm trixie").split()  # as conftest.py


@pytest.fixture(scope="module")
def image():
    """One suite (Debian 12 when it is chosen): what these tests prove is SSH
    between hosts and the fleet views, the same on both suites; Debian 13's
    OpenSSH is proven by the tenant and foundation tests (CI time)."""
    if os.geteuid() != 0:
        pytest.fail("box tests need root (systemd-nspawn, mount)")
    return build_image("bookworm" if "bookworm" in SUITES else SUITES[0])


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
