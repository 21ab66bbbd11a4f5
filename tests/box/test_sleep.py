"""Sleeping sites on real booted Debian 12 and 13 machines: an idle site runs
no process at all (its doors held by systemd), the first request wakes it
and is answered, requests during a wake wait for it, siteops's own probes do
not wake it, a deploy to a sleeping site drops no request and lets it sleep
again, a release that crashes on wake answers 502 with the reason and the
next request tries again, and sleeping turns off with no dropped request."""

import json
import re
import time

import pytest

from machine import (Load, commit, killed_at, settled, signals_for, step_count,
                     stopped_before_changes, stopped_by)

REPO = "/srv/repos/sleepy"
SLEEP = 10  # --sleep-after 10s: the shortest a site may have
APP = {
    "app.py": """\
import http.server, os, sys, time

if os.path.exists("CRASH"):
    sys.exit("cannot reach the payment service")
time.sleep(0.3)  # an app that takes a moment to start

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = (f"sleepy {open('VERSION').read().strip()} {os.environ['PORT']} "
                f"greeting={os.environ.get('GREETING', '')}\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
""",
    "requirements.txt": "",
    "siteops.toml": 'runtime = "python"\n\n[frontend]\nstart = "python app.py"\nhealth = "/"\n',
    "VERSION": "v1\n",
}


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops(f"add-site sleepy --domain sleepy.test --components frontend "
                f"--sleep-after {SLEEP}s")
    # Before its first deploy it runs nothing, and audit takes that as asleep.
    assert box.sh("systemctl is-active sleepy-redis.service", check=False).stdout.strip() \
        == "inactive"
    box.siteops("audit sleepy")
    commit(box, REPO, APP, "v1")
    box.siteops(f"deploy sleepy --repo {REPO}")
    return box


def registry(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]["sleepy"]


def live_unit(box) -> str:
    site = registry(box)
    return f"sleepy-frontend@{3100 + site['slot'] * 10 + site['live']['offset']}.service"


def slice_processes(box) -> list[str]:
    """The site's processes (every process of its units runs as its user)."""
    return box.sh("ps -u sleepy -o pid=,args= || true").stdout.splitlines()


def wait_asleep(box, seconds: float = SLEEP + 30) -> None:
    """Until the site's slice runs no process (its door's idle time, then
    nginx's idle upstream connections closed)."""
    deadline = time.time() + seconds
    while slice_processes(box):
        assert time.time() < deadline, f"still awake: {slice_processes(box)}"
        time.sleep(0.5)


def get(box, path: str = "/") -> tuple[str, float]:
    res = box.sh("curl -sS -o /tmp/body -w '%{http_code} %{time_total}' "
                 f"-H 'Host: sleepy.test' http://127.0.0.1{path}; echo; cat /tmp/body")
    status, took = res.stdout.split("\n")[0].split()
    return f"{status} {res.stdout.split(chr(10), 1)[1]}", float(took)


def test_an_idle_site_runs_no_process_and_its_doors_are_held_by_systemd(host):
    wait_asleep(host)
    site = registry(host)
    assert site["live"]["doors"] is True and site["sleep_after"] == SLEEP
    assert host.sh(f"systemctl is-active {live_unit(host)} sleepy-redis.service",
                   check=False).stdout.split() == ["inactive", "inactive"]
    door = 3108 + site["slot"] * 10 + site["live"]["offset"] % 2
    listeners = host.sh(f"ss -Hltnp 'sport = :{door}'").stdout
    assert "systemd" in listeners and "127.0.0.1" in listeners, listeners
    # Nothing of the site starts at boot but its door.
    assert host.sh(f"systemctl is-enabled {live_unit(host)} sleepy-redis.service",
                   check=False).stdout.split() == ["disabled", "disabled"]


def test_siteops_probes_do_not_wake_it(host):
    wait_asleep(host)
    host.siteops("audit", check=False)
    host.siteops("sites usage sleepy")
    host.siteops("sites show sleepy")
    host.siteops("backup sleepy")
    assert slice_processes(host) == []


def test_the_first_request_wakes_it_and_concurrent_ones_wait_for_the_wake(host):
    wait_asleep(host)
    out = host.sh("seq 20 | xargs -P 20 -I{} curl -sS -o /dev/null -w '%{http_code}\\n' "
                  "-H 'Host: sleepy.test' http://127.0.0.1/").stdout.split()
    assert out == ["200"] * 20, out
    assert host.sh(f"systemctl is-active {live_unit(host)}").stdout.strip() == "active"
    page, took = get(host)
    assert page.startswith("200 sleepy v1 "), page
    wakes = host.sh("cat /srv/sites/sleepy/shared/logs/door.log").stdout
    assert re.search(r"wake: port \d+ answered in \d+\.\d+s", wakes), wakes
    wait_asleep(host)  # and it sleeps again


def test_a_deploy_to_a_sleeping_site_drops_no_request_and_it_sleeps_again(host):
    wait_asleep(host)
    load = Load(host, "sleepy.test", rate=20)
    commit(host, REPO, {"VERSION": "v2\n"}, "v2")
    out = host.siteops("deploy sleepy").stdout
    time.sleep(2)
    samples, failed = load.failed()
    assert failed == [] and len(samples) > 40, failed[:5]
    assert f"goes back to sleep after {SLEEP}s without a request" in out, out
    assert get(host)[0].startswith("200 sleepy v2 ")
    wait_asleep(host)
    assert host.siteops("audit sleepy", check=False).returncode == 0


def test_a_release_that_crashes_on_wake_answers_502_and_the_next_request_tries_again(host):
    wait_asleep(host)
    rid = registry(host)["live"]["release"]
    crash = f"/srv/sites/sleepy/releases/{rid}/CRASH"
    host.sh(f"touch {crash}")
    try:
        page, _ = get(host)
        assert page.startswith("502 The site did not start (it exited while starting)"), page
        assert "cannot reach the payment service" in host.siteops("logs sleepy -n 50").stdout
        audit = json.loads(host.siteops("audit sleepy --json", check=False).stdout)
        bad = [f for f in audit["findings"] if f["severity"] != "ok" and "door" in f["id"]]
        assert bad, audit["findings"]
    finally:
        host.sh(f"rm -f {crash}")
    page, _ = get(host)
    assert page.startswith("200 sleepy v2 "), page


def test_config_set_on_a_sleeping_site_does_not_wake_it_and_its_next_wake_reads_it(host):
    wait_asleep(host)
    out = host.siteops("config sleepy set GREETING=hello").stdout
    assert "sleeps: its next wake reads the settings" in out, out
    assert slice_processes(host) == []
    page, _ = get(host)
    assert page.startswith("200 sleepy v2 ") and "greeting=hello" in page, page


def test_rollback_of_a_sleeping_site_serves_the_previous_release_and_sleeps_again(host):
    load = Load(host, "sleepy.test", rate=20)
    host.siteops("rollback sleepy")
    time.sleep(1)
    samples, failed = load.failed()
    assert failed == [] and samples
    assert get(host)[0].startswith("200 sleepy v1 ")
    wait_asleep(host)
    host.siteops("deploy sleepy")  # v2 again, for the tests below
    assert get(host)[0].startswith("200 sleepy v2 ")


def test_sleeping_turns_off_and_on_with_no_dropped_request(host):
    load = Load(host, "sleepy.test", rate=20)
    host.siteops("limits sleepy --sleep-after never")
    time.sleep(1)
    samples, failed = load.failed()
    assert failed == [] and samples
    site = registry(host)
    assert not site["live"].get("doors") and "sleep_after" not in site
    assert host.sh(f"systemctl is-enabled {live_unit(host)} sleepy-redis.service"
                   ).stdout.split() == ["enabled", "enabled"]
    host.siteops(f"limits sleepy --sleep-after {SLEEP}s")
    assert registry(host)["live"]["doors"] is True
    wait_asleep(host)
    assert get(host)[0].startswith("200 sleepy v2 ")



def sleeping(host) -> bool:
    """The site as the registry has it, with its units agreeing: doors in
    front when it sleeps, none when it is always on."""
    site = registry(host)
    doors = host.sh("systemctl list-units --plain --no-legend --state=active "
                    "'sleepy-door@*.socket'").stdout.split()
    assert bool(site["live"].get("doors")) == bool(doors) == ("sleep_after" in site), (site, doors)
    return "sleep_after" in site


def test_sleeping_turned_on_and_off_stopped_at_every_step_keeps_serving_and_converges(host):
    """limits --sleep-after stopped (KILL, INT, TERM in turn) after each of
    its steps and before each change of the registry, both ways, under load:
    no failed request, and the run again ends in the asked state."""
    if "bookworm" not in str(host.image):
        pytest.skip("the crash harness runs on Debian 12 only (CI time)")
    load = Load(host, "sleepy.test", rate=20)
    ways = {False: "limits sleepy --sleep-after never", True: f"limits sleepy --sleep-after {SLEEP}s"}
    steps = {want: step_count(host.siteops(ways[want]).stdout) for want in (False, True)}
    runs = 0
    for want in (False, True):
        for k, signal in signals_for(steps[want], runs):
            host.siteops(ways[not want])
            res = killed_at(host, k, ways[want], signal)
            assert stopped_by(res, signal) or res.stdout.strip().endswith("exit 0"), \
                res.stdout[-500:] + res.stderr[-1500:]
            host.siteops(ways[want])
            assert sleeping(host) is want
            runs += 1

        def again(k, want=want):
            host.siteops(ways[want])
            assert sleeping(host) is want
            host.siteops(ways[not want])
        host.siteops(ways[not want])
        runs += stopped_before_changes(host, ways[want], again)
    samples, failed = load.failed()
    print(f"sleep on/off: {steps} steps, {runs} stopped runs, {len(samples)} requests, "
          f"{len(failed)} failed")
    assert len(samples) > 100 and failed == [], failed[:5]
    settled(host, "sleepy")
    assert sleeping(host)


WORKER_APP = dict(APP, **{
    "worker.sh": """\
trap 'exit 0' TERM
while true; do
  item=$(redis-cli -u "$REDIS_URL" --no-auth-warning --raw BRPOP queue 1 | tail -n 1)
  [ -n "$item" ] && echo "$item" >> uploads/taken.txt
done
""",
    "enqueue.sh": """\
redis-cli -u "$REDIS_URL" --no-auth-warning LPUSH queue "job-$(date +%s%N)" >/dev/null
date +%s >> uploads/ticks.txt
""",
    "siteops.toml": 'runtime = "python"\n\n[frontend]\nstart = "python app.py"\nhealth = "/"\n\n'
                    '[workers.q]\ncommand = "sh worker.sh"\n\n'
                    '[jobs.enqueue]\nschedule = "*:*:0/20"\ncommand = "sh enqueue.sh"\n',
})


def test_jobs_run_on_time_while_the_site_sleeps_and_its_workers_take_them_at_the_next_wake(
        host):
    """A job wakes only Redis (its unit wants it), which stops after it; the
    items it queued wait in Redis (saved at its stop) for the next wake, when
    the workers start with the web instance and take every one."""
    host.siteops("add-site napq --domain napq.test --components frontend --sleep-after 10s")
    commit(host, "/srv/repos/napq", WORKER_APP, "v1")
    host.siteops("deploy napq --repo /srv/repos/napq")
    uploads = "/srv/sites/napq/shared/uploads"

    def procs():
        return host.sh("ps -u napq -o args= || true").stdout.splitlines()
    deadline = time.time() + 60
    while procs() or int(host.sh(f"cat {uploads}/ticks.txt 2>/dev/null | wc -l").stdout) < 2:
        assert time.time() < deadline, procs()
        time.sleep(1)
    # Two jobs ran; the site sleeps (Redis stopped after each); nothing taken yet
    # after the last wake... until a request wakes it and its worker.
    queued = int(host.sh(f"cat {uploads}/ticks.txt | wc -l").stdout)
    assert host.sh("curl -sS -o /dev/null -w '%{http_code}' -H 'Host: napq.test' "
                   "http://127.0.0.1/").stdout == "200"
    deadline = time.time() + 20
    while int(host.sh(f"cat {uploads}/taken.txt 2>/dev/null | wc -l").stdout) < queued:
        assert time.time() < deadline, host.sh(f"cat {uploads}/taken.txt", check=False).stdout
        time.sleep(0.5)
    host.siteops("remove-site napq --yes --no-backup")
