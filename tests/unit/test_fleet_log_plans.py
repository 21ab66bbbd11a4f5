"""The fleet's log host (fleetlogs.py, ops/fleetlogs.py): the store read in
time order, the values refused, the steps `hosts logs-to` runs on which host
and in what order, and the PEM taken out of a remote step's output."""

import io
import json
import time

import pytest

from fakes import make_host  # noqa: F401  (puts lib/ on the path)
from siteops import fleet, fleetlogs
from siteops.commands import logs
from siteops.errors import UsageError
from siteops.host import Host, Result
from siteops.ops import fleetlogs as fleetlogs_op
from siteops.paths import Paths
from siteops.validate import InvalidInput

CERT = "-----BEGIN CERTIFICATE-----\nQ0VSVA==\n-----END CERTIFICATE-----\n"
CA = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nQ1NS\n-----END CERTIFICATE REQUEST-----\n"


def store(root, host_name: str, site: str, lines: list[str], rotated: list[str] = ()):
    d = root / "var/log/siteops-fleet" / host_name
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{site}.log").write_text("".join(f"{line}\n" for line in lines))
    if rotated:
        (d / f"{site}.log.1").write_text("".join(f"{line}\n" for line in rotated))


def test_the_store_is_read_in_time_order_across_hosts_with_since_grep_and_limit(tmp_path):
    host = Host(paths=Paths(tmp_path))
    store(tmp_path, "web-a", "shop", ["2026-12-07T10:00:01.5+00:00 web-a shop.frontend a2",
                                      "2026-12-07T10:00:03+00:00 web-a shop.nginx-access a3"],
          rotated=["2026-12-06T10:00:00+00:00 web-a shop.frontend a1"])
    # Another host, whose clock writes another offset: compared as times.
    store(tmp_path, "web-b", "shop", ["2026-12-07T11:00:02+01:00 web-b shop.frontend b1"])
    store(tmp_path, "web-a", "other", ["2026-12-07T10:00:02+00:00 web-a other.frontend x"])
    got = [line.split()[-1] for line in fleetlogs.query(host, "shop", None, None, 20)]
    assert got == ["a1", "a2", "b1", "a3"]
    since = fleetlogs._stamp("2026-12-07T10:00:00+00:00").timestamp()
    assert [l.split()[-1] for l in fleetlogs.query(host, "shop", since, None, 20)] == \
        ["a2", "b1", "a3"]
    assert [l.split()[-1] for l in fleetlogs.query(host, "shop", None, "frontend", 2)] == \
        ["a2", "b1"]
    assert fleetlogs.query(host, "nosuch", None, None, 20) == []
    assert fleetlogs.usage(host)["hosts"] == ["web-a", "web-b"]


def test_a_link_planted_in_the_store_is_not_followed(tmp_path):
    host = Host(paths=Paths(tmp_path))
    store(tmp_path, "web-a", "other", ["2026-12-07T10:00:00+00:00 web-a other.frontend x"])
    (tmp_path / "secret").write_text("2026-12-07T10:00:00+00:00 x shop.frontend SECRET\n")
    (tmp_path / "var/log/siteops-fleet/web-a/shop.log").symlink_to(tmp_path / "secret")
    assert fleetlogs.query(host, "shop", None, None, 20) == []


@pytest.mark.parametrize("value", ["5X", "0M", "100", "1.5G", "-1M", "9999999G"])
def test_a_size_that_is_not_one_is_refused(value):
    with pytest.raises(UsageError):
        fleetlogs.size(value)


@pytest.mark.parametrize("value", ["2x", "h", "-1h", "1.5h", "١h"])
def test_an_age_that_is_not_one_is_refused(value):
    with pytest.raises(InvalidInput):
        logs.since(value)


def test_pem_blocks_are_taken_out_of_what_a_step_says():
    said = f"changed: something\n{CA}==> more\n{CERT}"
    assert fleetlogs.pem(said) == [CA, CERT]
    assert fleetlogs.pem(f"x\n{CSR}", "CERTIFICATE REQUEST") == [CSR]
    assert fleetlogs.pem("no pem here") == []


class Remotes:
    """ssh answered as each host would for its step of logs-to; everything
    else (this host's own openssl, rsyslog, systemctl) answered ok."""

    def __init__(self):
        self.steps = []  # (host address, step)

    def __call__(self, argv, input=None, timeout=None, env=None, stream=None):
        argv = [str(a) for a in argv]
        if argv[0] == "ssh":
            address = argv[argv.index("--") + 1]
            command = argv[argv.index("--") + 2:]
            if command[1:] == ["version"]:
                return Result(argv, 0, fleet.version() + "\n", "")
            step = command[command.index("--receive") + 1]
            self.steps.append((address, step, input))
            out = {"serve": f"==> changed\n{CA}", "request": CSR, "sign": CERT, "ship": ""}[step]
            return Result(argv, 0, out, "")
        if argv[:2] == ["openssl", "req"]:
            return Result(argv, 0, CSR, "")
        if argv[:2] == ["openssl", "pkey"] or argv[:3] == ["openssl", "x509", "-noout"]:
            return Result(argv, 0, "PUBLIC KEY\n", "")
        if argv[:2] == ["openssl", "genpkey"]:
            return Result(argv, 0, "KEY\n", "")
        return Result(argv, 0, "", "")


def test_logs_to_runs_each_hosts_step_in_order_and_keys_stay_home(tmp_path):
    runner = Remotes()
    host = Host(runner=runner, dry_run=False, out=io.StringIO(), paths=Paths(tmp_path))
    (tmp_path / "etc/siteops").mkdir(parents=True)
    (tmp_path / "etc/siteops/hosts.json").write_text(json.dumps({"hosts": {
        "big": {"name": "big", "user": "root", "address": "192.0.2.2", "port": 22},
        "edge": {"name": "edge", "user": "root", "address": "192.0.2.3", "port": 22}}}))
    receive = fleetlogs.Receiving("192.0.2.2", 6514, 7, "50M")
    shipped = fleetlogs_op.logs_to(host, "big", receive)
    assert shipped == ["local", "big", "edge"]
    assert [(a, s) for a, s, _ in runner.steps] == [
        ("192.0.2.2", "serve"),
        ("192.0.2.2", "sign"),                          # this host's request
        ("192.0.2.2", "request"), ("192.0.2.2", "sign"), ("192.0.2.2", "ship"),
        ("192.0.2.3", "request"), ("192.0.2.2", "sign"), ("192.0.2.3", "ship")]
    # What crosses the network: requests, certificates, the CA; never a key.
    for _, _, sent in runner.steps:
        assert "PRIVATE KEY" not in (sent or "")
    assert [sent for a, s, sent in runner.steps if s == "ship"] == [CA + CERT] * 2
    assert [sent for a, s, sent in runner.steps if s == "sign"] == [CSR] * 3


def test_logs_to_an_unknown_host_changes_nothing(tmp_path):
    runner = Remotes()
    host = Host(runner=runner, dry_run=False, out=io.StringIO(), paths=Paths(tmp_path))
    with pytest.raises(UsageError, match="no host 'nosuch'"):
        fleetlogs_op.logs_to(host, "nosuch", fleetlogs.Receiving("x"))
    assert runner.steps == [] and not (tmp_path / "etc/siteops/fleet-logs.json").exists()


def test_all_hosts_without_a_log_host_says_how_to_make_one(tmp_path):
    host = Host(paths=Paths(tmp_path))
    with pytest.raises(Exception, match="hosts logs-to NAME"):
        fleetlogs_op.all_hosts(host, "shop", time.time(), None, 20)


def test_a_dry_run_asks_no_host_to_change_and_shows_the_action(tmp_path):
    runner = Remotes()
    host = Host(runner=runner, dry_run=True, out=io.StringIO(), paths=Paths(tmp_path))
    (tmp_path / "etc/siteops").mkdir(parents=True)
    (tmp_path / "etc/siteops/hosts.json").write_text(json.dumps({"hosts": {
        "big": {"name": "big", "user": "root", "address": "192.0.2.2", "port": 22}}}))
    assert fleetlogs_op.logs_to(host, "big", fleetlogs.Receiving("192.0.2.2")) == []
    assert runner.steps == []
    said = host.out.getvalue()
    assert 'StreamDriverPermittedPeers="192.0.2.2"' in said and "would make big" in said
