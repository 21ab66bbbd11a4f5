import fcntl
import json
import os
import stat

import pytest

from siteops import model, network, registry, sysctl
from siteops import units
from siteops.model import Site
from siteops.errors import SiteopsError

from fakes import make_host


def test_missing_registry_is_empty(root):
    host, _ = make_host(root)
    assert registry.load(host) == registry.Registry()


@pytest.mark.parametrize("text,message", [("{not json", "corrupt"), ('{"version": 1}', "corrupt"),
                                          ('{"version": 9, "sites": {}}', "schema version 9"),
                                          ("[]", "corrupt")])
def test_bad_registry_stops_and_is_kept(root, text, message):
    host, _ = make_host(root, dry_run=False)
    host.paths.state.mkdir(parents=True)
    host.paths.registry.write_text(text)
    with pytest.raises(SiteopsError, match=message):
        with registry.locked(host, "test"):
            pass
    assert host.paths.registry.read_text() == text


def test_save_is_root_only_and_keeps_a_backup(root):
    host, _ = make_host(root, dry_run=False)
    with registry.locked(host, "test") as data:
        data.sites["a"] = Site(name="a", slot=0)
        registry.save(host, data)
    with registry.locked(host, "test") as data:
        assert data.sites["a"].slot == 0
        data.sites["b"] = Site(name="b", slot=1)
        registry.save(host, data)
    path = host.paths.registry
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())["sites"]) == {"a", "b"}
    assert set(json.loads(path.with_name("registry.json.bak").read_text())["sites"]) == {"a"}
    assert sorted(os.listdir(path.parent)) == ["registry.json", "registry.json.bak", "registry.lock"]


def test_dry_run_neither_locks_nor_writes(root):
    host, _ = make_host(root)
    with registry.locked(host, "test") as data:
        registry.save(host, data)
    assert not host.paths.state.exists()


def test_lock_held_elsewhere_is_reported(root):
    host, _ = make_host(root, dry_run=False)
    host.paths.state.mkdir(parents=True)
    # flock belongs to an open file: a second open() conflicts even in-process.
    with open(host.paths.registry_lock, "w") as other:
        other.write("pid 1: add-site other\n")
        other.flush()
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(SiteopsError, match=r"locked by another siteops command \(pid 1: add-site other\)"):
            with registry.locked(host, "test", wait=0.3):
                pass
    with registry.locked(host, "test", wait=0.3) as data:  # released with the file
        assert data.sites == {}


def test_slots_skip_taken_and_listening_ports():
    data = registry.Registry({"a": Site("a", 0), "c": Site("c", 2)})
    assert registry.allocate_slot(data, set()) == 1
    assert registry.allocate_slot(data, {4015}) == 3   # slot 1's API block is in use
    assert registry.allocate_slot(data, {5019, 3139}) == 4


def test_slots_run_out():
    data = registry.Registry({f"s{k}": Site(f"s{k}", k) for k in range(units.MAX_SLOTS)})
    with pytest.raises(SiteopsError, match="no free port block"):
        registry.allocate_slot(data, set())


def test_ports_follow_the_slot():
    assert units.ports_for(3, ["frontend", "api"]) == {"frontend": 3130, "api": 4030, "redis": 5030}
    assert units.ports_for(0, ["api"]) == {"api": 4000, "redis": 5000}
    assert len(set(units.block_ports(7))) == 30


def test_a_schema_1_file_is_upgraded_with_its_defaults_and_unknown_keys_kept(root):
    host, _ = make_host(root, dry_run=False)
    host.paths.state.mkdir(parents=True)
    v1 = {"version": 1, "sites": {"shop": {
        "name": "shop", "slot": 0, "state": "ready", "domains": ["shop.test"],
        "components": ["frontend"], "commands": {"frontend": "node s.js"},
        "ports": {"frontend": 3100, "redis": 5000}, "uid": 1001, "future_key": [1, 2],
        "live": {"release": "20261125T200000Z", "offset": 1},
        "releases": {"20261125T200000Z": {"result": "ok", "commit": "abc", "note": "x"}}}}}
    host.paths.registry.write_text(json.dumps(v1))
    shop = registry.load(host).sites["shop"]
    assert (shop.database, shop.user, shop.keep, shop.limits.set(), shop.repo) == (
        "shop", "shop", 5, {}, None)
    assert shop.live.release == "20261125T200000Z" and shop.live.offset == 1
    assert shop.releases["20261125T200000Z"].health_timeout == 60
    with registry.locked(host, "upgrade") as data:
        registry.save(host, data)
    saved = json.loads(host.paths.registry.read_text())
    assert saved["version"] == 2 and saved["sites"]["shop"]["future_key"] == [1, 2]
    assert saved["sites"]["shop"]["keep"] == 5
    assert saved["sites"]["shop"]["releases"]["20261125T200000Z"]["note"] == "x"
    assert registry.load(host) == data  # the round trip loses nothing


RID = "20261125T200000Z"
FULL = {"version": 2, "sites": {"shop": {
    "name": "shop", "slot": 0, "state": "ready", "domains": ["shop.test"],
    "components": ["frontend"], "components_chosen": False, "commands": {"frontend": "node s.js"},
    "ports": {"frontend": 3100, "redis": 5000}, "uid": 1001, "user": "shop", "database": "shop",
    "created": None, "updated": None, "repo": None, "keep": 5, "redis_maxmemory": None,
    "tls": None, "limits": {"memory_max": "512M", "tasks_max": 128},
    "live": {"release": RID, "offset": 1}, "warm": {"release": RID, "offset": 0},
    "keys": [{"fingerprint": "SHA256:" + "k" * 43, "key": "ssh-ed25519 AAAA", "label": "ci",
              "role": "read", "added": "2026-11-30T10:00:00Z", "by": "root"}],
    "maintenance": {"message": "db", "retry_after": 60, "since": "2026-11-30T10:00:00Z",
                    "by": "root"},
    "move": {"to": "big", "address": "192.0.2.2", "stage": "forwarding", "scheme": "http",
             "started": "2026-11-30T10:00:00Z", "snapshot": None},
    "forwarded_by": ["198.51.100.1"], "held": True,
    "history": [{"action": "deploy", "release": RID, "result": "ok", "user": "root",
                 "at": "2026-11-25T20:00:00Z", "from": None, "commit": "abc"}],
    "releases": {RID: {**{k: v for k, v in model.release_to_json(model.Release()).items()},
                       "result": "ok", "commit": "abc",
                       "workers": {"mail": {"command": "python3 mail.py", "count": 2}},
                       "jobs": {"tick": {"schedule": "hourly", "command": "python3 t.py"}}}}}}}


def test_a_registry_with_workers_jobs_limits_and_history_round_trips_byte_for_byte(root):
    host, _ = make_host(root, dry_run=False)
    host.paths.state.mkdir(parents=True)
    text = json.dumps(FULL, indent=2, sort_keys=True) + "\n"
    host.paths.registry.write_text(text)
    site = registry.load(host).sites["shop"]
    assert site.releases[RID].workers["mail"].count == 2
    assert site.releases[RID].jobs["tick"].schedule == "hourly"
    assert site.limits.memory_max == "512M" and site.history[0].extra["commit"] == "abc"
    assert site.keys[0].role == "read" and site.keys[0].label == "ci"
    with registry.locked(host, "test") as data:
        data.sites["shop"].updated = None
        registry.save(host, data)
    assert host.paths.registry.read_text() == text


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(slot="3"), "sites.shop.slot must be a whole number, not \"3\""),
    (lambda s: s.update(slot=True), "sites.shop.slot must be a whole number, not true"),
    (lambda s: s.update(domains="shop.test"), "sites.shop.domains must be a list"),
    (lambda s: s["releases"][RID]["workers"]["mail"].update(count="2"),
     f"sites.shop.releases.{RID}.workers.mail.count must be a whole number"),
    (lambda s: s["releases"][RID]["workers"]["mail"].pop("command"),
     f"sites.shop.releases.{RID}.workers.mail.command is missing"),
    (lambda s: s["releases"][RID]["jobs"].update(tick="hourly"),
     f"sites.shop.releases.{RID}.jobs.tick must be an object"),
    (lambda s: s["limits"].update(tasks_max="many"), "sites.shop.limits.tasks_max must be"),
    (lambda s: s["history"].append(["deploy"]), "sites.shop.history[1] must be an object"),
    (lambda s: s.update(live={"release": RID, "offset": "1"}), "sites.shop.live.offset must be"),
])
def test_a_value_of_the_wrong_type_is_one_clear_error_naming_its_field(root, change, field):
    host, _ = make_host(root, dry_run=False)
    host.paths.state.mkdir(parents=True)
    doc = json.loads(json.dumps(FULL))
    change(doc["sites"]["shop"])
    host.paths.registry.write_text(json.dumps(doc))
    with pytest.raises(SiteopsError) as err:
        registry.load(host)
    assert field in str(err.value) and "nothing was changed" in str(err.value), str(err.value)


def test_slots_past_the_reference_continue_in_a_second_range_that_collides_with_nothing():
    # The first 90 keep the reference's ports exactly.
    assert units.ports_for(89, ["frontend", "api"]) == {"frontend": 3990, "api": 4890,
                                                       "redis": 5890}
    assert units.ports_for(90, ["frontend", "api"]) == {"frontend": 10000, "api": 10010,
                                                       "redis": 10020}
    assert units.MAX_SLOTS >= 1000
    every = [units.block_ports(k) for k in range(units.MAX_SLOTS)]
    flat = [p for ports in every for p in ports]
    assert len(flat) == len(set(flat)) == 30 * units.MAX_SLOTS   # never shared
    second = [p for ports in every[units.REFERENCE_SLOTS:] for p in ports]
    first, last = units.SECOND_RANGE
    assert min(second) == first and max(second) == last
    # Below the kernel's default ephemeral range (32768-60999) except the part
    # bootstrap reserves, and clear of PostgreSQL's 5432 and Redis's 6379.
    assert 5432 not in second and 6379 not in second
    reserved = network.port_list(sysctl.baseline()["net.ipv4.ip_local_reserved_ports"])
    assert set(second) <= reserved
    with pytest.raises(ValueError):
        units.block_bases(units.MAX_SLOTS)


def test_a_slot_the_kernel_may_hand_out_is_skipped(root):
    proc = root / "proc/sys/net/ipv4"
    proc.mkdir(parents=True)
    (proc / "ip_local_port_range").write_text("32768\t60999\n")
    (proc / "ip_local_reserved_ports").write_text("\n")   # not reserved (yet)
    host, _ = make_host(root, [(["ss"], 0, "")])
    data = registry.Registry({f"s{k}": Site(f"s{k}", k) for k in range(848)})
    unavailable = network.unavailable_ports(host)
    assert units.block_ranges(847)[-1][1] < 32768 <= units.block_ranges(848)[-1][1]
    with pytest.raises(SiteopsError, match="ephemeral range"):
        registry.allocate_slot(data, unavailable)
    (proc / "ip_local_reserved_ports").write_text("10000-39999\n")
    assert registry.allocate_slot(data, network.unavailable_ports(host)) == 848
