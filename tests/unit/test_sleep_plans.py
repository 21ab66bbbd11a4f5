"""Sleeping sites: the doors' ports and units, the switch's plan behind
doors, the registry's new fields left out when unused, audit's view of a
sleeping site, and the door program against real sockets."""

import json
import socket
import threading
import time

import pytest

from fakes import make_host, planned_commands
from siteops import door, model, site_checks, units, usage, validate
from siteops.errors import SiteopsError
from siteops.model import Live, Release, Site

RUNS = Release(result="ok", commands={"frontend": "python app.py"}, health={"frontend": "/"})


def sleepy(offset=0, doors=True, **kw) -> Site:
    return Site("nap", 2, domains=["nap.test"], components=["frontend"],
                ports=units.ports_for(2, ["frontend"]), sleep_after=900,
                live=Live("r1", offset, doors), releases={"r1": RUNS}, **kw)


def test_doors_sit_on_offsets_8_and_9_by_parity_and_nginx_goes_to_them():
    site = sleepy(offset=0)
    assert units.upstream_ports(site) == {"frontend": 3128}
    assert units.live_doors(site) == ["nap-door@3120.socket"]
    assert units.upstream_ports(sleepy(offset=1)) == {"frontend": 3129}
    assert units.upstream_ports(sleepy(offset=0, doors=False)) == {"frontend": 3120}
    # The next release's door is the other one, even when its usual port is busy.
    assert units.spare_offset(site) == 1
    assert units.spare_offset(site, busy={3121}) == 3
    assert units.spare_offset(sleepy(offset=0, doors=False), busy={3121}) == 2
    # Instances never take the doors' offsets, even with the rest of the block busy.
    full = Site("a", 0, components=["frontend"], ports=units.ports_for(0, ["frontend"]),
                live=Live("r1", 7))
    with pytest.raises(SiteopsError, match="every port of its blocks is in use"):
        units.spare_offset(full, busy=set(range(3100, 3107)))


def test_a_sleeping_site_runs_only_its_doors_at_boot():
    assert units.always_on(sleepy()) == ["nap-door@3120.socket"]
    assert units.always_on(sleepy(doors=False)) == ["nap-redis.service",
                                                   "nap-frontend@3120.service"]
    fresh = Site("nap", 2, components=["frontend"], ports=units.ports_for(2, ["frontend"]),
                 sleep_after=60)
    assert units.always_on(fresh) == []  # not deployed, sleeping: nothing runs
    assert units.live_units(sleepy()) == ["nap-frontend@3120.service", "nap-redis.service",
                                          "nap-door@3120.socket", "nap-door@3120.service"]


def test_the_new_fields_are_left_out_of_the_registry_when_unused():
    plain = model.site_to_json(Site("a", 0, live=Live("r1", 1)))
    assert "sleep_after" not in plain and "doors" not in plain["live"]
    data = model.site_to_json(sleepy())
    assert data["sleep_after"] == 900 and data["live"]["doors"] is True
    assert model.site_from_json(json.loads(json.dumps(data))) == sleepy()


@pytest.mark.parametrize("text, seconds", [("10s", 10), ("15m", 900), ("2h", 7200),
                                           ("7d", 604800), ("never", None)])
def test_sleep_after_reads_times(text, seconds):
    assert validate.sleep_after(text) == seconds
    assert validate.duration(seconds) == text


@pytest.mark.parametrize("text", ["9s", "8d", "0m", "15", "15 m", "1.5h", "forever", "-1m",
                                  "15M", "", "1e3s"])
def test_sleep_after_refuses_what_it_cannot_read(text):
    with pytest.raises(validate.InvalidInput, match="--sleep-after"):
        validate.sleep_after(text)


def test_audit_takes_an_asleep_instance_as_fine_and_a_failed_wake_as_a_finding():
    site = sleepy()
    states = {"nap-frontend@3120.service": {"active": "inactive", "enabled": "not enabled"},
              "nap-redis.service": {"active": "inactive", "enabled": "not enabled"},
              "nap-door@3120.socket": {"active": "active", "enabled": "enabled"},
              "nap-door@3120.service": {"active": "inactive", "enabled": "not enabled"}}
    found = {f.id: f for f in site_checks.unit_checks(site, {"units": states, "exposure": {}})}
    assert all(f.severity == "ok" for f in found.values()), found
    assert "asleep" in found["site.nap.unit:nap-frontend@3120.service"].message
    states["nap-door@3120.service"]["active"] = "failed"
    states["nap-door@3120.socket"]["enabled"] = "not enabled"
    found = {f.id: f for f in site_checks.unit_checks(site, {"units": states, "exposure": {}})}
    assert found["site.nap.door:nap-door@3120.service"].severity != "ok"
    assert "did not answer when a request woke it" in \
        found["site.nap.door:nap-door@3120.service"].message
    assert found["site.nap.unit:nap-door@3120.socket"].severity != "ok"


def test_audit_takes_a_never_deployed_sleeping_sites_redis_as_asleep():
    """Before its first deploy a sleeping site runs nothing (always_on), so
    its Redis, stopped and not enabled, is asleep, not a critical finding:
    the two are decided in one place (units.sleeps)."""
    fresh = Site("nap", 2, components=["frontend"], ports=units.ports_for(2, ["frontend"]),
                 sleep_after=60)
    states = {"nap-redis.service": {"active": "inactive", "enabled": "not enabled"}}
    found = site_checks.unit_checks(fresh, {"units": states, "exposure": {}})
    assert [(f.id, f.severity) for f in found] == [("site.nap.unit:nap-redis.service", "ok")]
    states["nap-redis.service"]["active"] = "failed"
    assert site_checks.unit_checks(fresh, {"units": states, "exposure": {}})[0].severity != "ok"
    awake = Site("nap", 2, components=["frontend"], ports=units.ports_for(2, ["frontend"]))
    assert site_checks.unit_checks(awake, {"units": states, "exposure": {}})[0].severity != "ok"


def test_systemd_holding_a_door_port_is_not_a_foreign_listener():
    site = sleepy()
    pid1 = {"proto": "tcp", "addr": "127.0.0.1", "port": 3128, "units": ["init.scope"],
            "programs": ["systemd"]}
    assert site_checks.ports_check(site, {"listeners": [pid1]}).severity == "ok"
    other = dict(pid1, port=3125)  # not a door: PID 1 has no business there
    assert site_checks.ports_check(site, {"listeners": [other]}).severity != "ok"


def test_the_door_answers_waiting_requests_502_and_waits_for_a_port(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    for c in clients:
        c.sendall(b"GET / HTTP/1.1\r\nHost: nap.test\r\n\r\n")
    time.sleep(0.1)
    assert door.answer_waiting(listener, "no\n") == 3
    for c in clients:
        assert c.recv(200).startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
        c.close()
    listener.close()
    # wait_ready: False when nothing listens in time, True once something does.
    free = socket.create_server(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    assert door.wait_ready(closed_port, 0.2) is False
    late = {}

    def listen_later():
        time.sleep(0.3)
        late["s"] = socket.create_server(("127.0.0.1", closed_port))
    threading.Thread(target=listen_later).start()
    assert door.wait_ready(closed_port, 5) is True
    late["s"].close()


def test_usage_of_many_sleeping_sites_asks_systemd_once(root):
    """One `systemctl show` for every sleeping site's instances (a call per
    site made audit of 313 sleeping sites take 10 s of CPU), each site's
    block read as its own."""
    out = "\n\n".join(f"ActiveState={state}\nActiveEnterTimestamp=@1700000000\n"
                      f"InactiveEnterTimestamp=@1700000900"
                      for state in ("inactive", "active", "inactive")) + "\n"
    naps = [Site(f"nap{i}", i, domains=[f"nap{i}.test"], components=["frontend"],
                 ports=units.ports_for(i, ["frontend"]), sleep_after=900,
                 live=Live("r1", 0, True), releases={"r1": RUNS}) for i in range(4)]
    # nap3's instance is not loaded (stopped and let go): asleep, nothing to ask.
    loaded = "".join(f"{units.live_web(s)[0]} loaded inactive dead x\n" for s in naps[:3])
    host, runner = make_host(root, [(["systemctl", "show"], 0, out),
                                    (["systemctl", "list-units"], 0, loaded)])
    rows = usage.collect(host, naps, interval=0, with_sizes=False)
    assert [r["sleep"]["state"] for r in rows] == ["asleep", "awake", "asleep", "asleep"]
    assert rows[3]["sleep"]["since"] is None
    shows = [c for c in runner.calls if c[:2] == ["systemctl", "show"]]
    assert len(shows) == 1 and shows[0][-4:] == ["--", *(units.live_web(s)[0] for s in naps[:3])]


def test_sleep_state_reads_wakes_and_the_last_request_without_touching_the_site(root):
    host, _ = make_host(root, [(["systemctl", "show"], 0,
                                "ActiveState=inactive\nActiveEnterTimestamp=@1700000000\n"
                                "InactiveEnterTimestamp=@1700000900\n")])
    logs = root / "srv/sites/nap/shared/logs"
    logs.mkdir(parents=True)
    today = time.strftime("%Y-%m-%d")
    (logs / "door.log").write_text(f"{today}T01:00:00 wake: port 3120 answered in 0.41s\n"
                                   f"{today}T02:00:00 wake failed: nothing answered\n"
                                   f"{today}T03:00:00 wake: port 3120 answered in 0.39s\n"
                                   "2020-01-01T00:00:00 wake: port 3120 answered in 0.5s\n")
    (logs / "nginx-access.log").write_text('1.2.3.4 - "GET / HTTP/1.1" 200 t=1700000800.123\n')
    state = usage.sleep_state(host, sleepy())
    assert state == {"sleep_after": 900, "state": "asleep", "since": "2023-11-14T22:28:20Z",
                     "last_request": "2023-11-14T22:26:40Z", "wakes_today": 2}
    assert usage.sleep_state(host, sleepy().copy(sleep_after=None)) is None
    assert planned_commands(host) == []  # read, never started


def test_exposure_is_scored_again_only_for_units_whose_files_changed(root):
    """audit keeps each unit's systemd-analyze score with what it depends
    on; a second audit asks systemd-analyze nothing, a changed drop-in has
    its unit scored again."""
    from siteops import facts
    out = ("→ Overall exposure level for a-frontend@3100.service: 1.2 OK\n"
           "→ Overall exposure level for a-redis.service: 1.5 OK\n")
    host, runner = make_host(root, [(["systemd-analyze"], 0, out)], dry_run=False)
    (root / "var/lib/siteops").mkdir(parents=True)
    units_dir = root / "etc/systemd/system"
    (units_dir / "a-frontend@3100.service.d").mkdir(parents=True)
    (units_dir / "a-frontend@.service").write_text("[Service]\n")
    (units_dir / "a-redis.service").write_text("[Service]\n")
    names = ["a-frontend@3100.service", "a-redis.service"]
    assert facts.exposure(host, names) == {"a-frontend@3100.service": 1.2, "a-redis.service": 1.5}
    assert facts.exposure(host, names) == {"a-frontend@3100.service": 1.2, "a-redis.service": 1.5}
    analyzed = [c for c in runner.calls if c[0] == "systemd-analyze"]
    assert len(analyzed) == 1
    (units_dir / "a-frontend@3100.service.d/siteops-release.conf").write_text("[Service]\nX=1\n")
    facts.exposure(host, names)
    analyzed = [c for c in runner.calls if c[0] == "systemd-analyze"]
    assert len(analyzed) == 2 and analyzed[1][-1:] == ["a-frontend@3100.service"]
