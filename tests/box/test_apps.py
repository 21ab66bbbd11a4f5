"""Real apps on booted Debian 12 and 13 machines: a release command (a
migration on the site's PostgreSQL), workers fed through the site's Redis, a
scheduled job every 5 s, config changes under load, logs, a Procfile app, and
a redeploy that reuses the installed dependencies."""

import json
import re
import time
import warnings

import pytest

from machine import PYTHON_APP, Load, commit, events_of, hooks, start_receivers, states

REPO = "/srv/repos/app"
SITE = "/srv/sites/app"
PSQL = "runuser -u postgres -- psql -d app -tAc"

APP = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ.get('VERSION_TAG', 'v?')} greeting={os.environ.get('GREETING', '')!r}\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

MIGRATE = """\
set -e
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "CREATE TABLE IF NOT EXISTS done (item text, at timestamptz DEFAULT now())"
echo "migrated"
"""

WORKER = """\
echo "worker $SITEOPS_RELEASE started"
trap 'echo "worker stopping"; exit 0' TERM
while true; do
  item=$(redis-cli -u "$REDIS_URL" --no-auth-warning --raw BRPOP queue 1 | tail -n 1)
  if [ -n "$item" ]; then
    psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -c "INSERT INTO done (item) VALUES ('$item')"
    echo "$item $SITEOPS_RELEASE" >> uploads/taken.txt
    echo "processed $item"
  fi
done
"""

TICK = """\
date +%s >> uploads/ticks.txt
echo "tick $SITEOPS_RELEASE"
"""

MANIFEST = """\
runtime = "python"
release = "sh migrate.sh"
health_timeout = 20

[frontend]
start = "python app.py"
health = "/"

[workers.q]
command = "sh worker.sh"
count = 2

[jobs.tick]
schedule = "*:*:0/5"
command = "sh tick.sh"
"""

FILES = {"app.py": APP, "migrate.sh": MIGRATE, "worker.sh": WORKER, "tick.sh": TICK,
         "requirements.txt": "", "siteops.toml": MANIFEST}


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops("add-site app --domain app.test --components frontend")
    box.siteops("config app set VERSION_TAG=v1 --no-restart")
    commit(box, REPO, FILES, "v1")
    box.siteops(f"deploy app --repo {REPO}")
    return box


def wait_for(box, script: str, seconds: float = 20) -> str:
    """Output of script once it prints something (polling), else fail."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = box.sh(script, check=False).stdout.strip()
        if out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"nothing from {script!r} within {seconds}s")


def push(box, item: str) -> None:
    box.sh(f". {SITE}/shared/.env && redis-cli -u \"$REDIS_URL\" --no-auth-warning "
           f"LPUSH queue {item} >/dev/null")


def registry(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]


def live(box) -> str:
    return registry(box)["app"]["live"]["release"]


def page(box) -> str:
    return box.sh("curl -sS -H 'Host: app.test' http://127.0.0.1/").stdout


def test_the_release_command_migrated_and_workers_consume_the_queue(host):
    assert host.sh(f"{PSQL} \"SELECT count(*) FROM information_schema.tables "
                   "WHERE table_name = 'done'\"").stdout.strip() == "1"
    workers = ["app-worker@q-1-0.service", "app-worker@q-2-0.service"]
    assert host.sh(f"systemctl is-active {' '.join(workers)}").stdout.split() == ["active"] * 2
    assert host.sh(f"systemctl is-enabled {' '.join(workers)}").stdout.split() == ["enabled"] * 2
    push(host, "hello")
    assert wait_for(host, f"{PSQL} \"SELECT item FROM done WHERE item = 'hello'\"") == "hello"
    out = host.siteops("logs app q -n 50").stdout
    assert re.search(r"^worker q \| processed hello$", out, re.M), out
    # Workers run in the site's slice, as the site user, hardened like the web units.
    props = host.sh("systemctl show -p Slice -p User -p ProtectSystem -p PrivateUsers "
                    "app-worker@q-1-0.service").stdout
    assert "Slice=siteops-app.slice" in props and "User=app" in props
    assert "ProtectSystem=strict" in props and "PrivateUsers=yes" in props


def test_the_job_runs_every_five_seconds_and_its_result_is_shown(host):
    wait_for(host, f"test $(wc -l < {SITE}/shared/uploads/ticks.txt 2>/dev/null || echo 0) "
                   "-ge 2 && echo two", seconds=20)
    assert host.sh("systemctl is-enabled app-job-tick.timer").stdout.strip() == "enabled"
    assert "Slice=siteops-app.slice" in host.sh("systemctl show -p Slice app-job-tick.service").stdout
    show = host.siteops("sites show app").stdout
    assert re.search(r"tick\s+\*:\*:0/5\s+last .*: (success|running)", show), show
    assert "workers:      q x2" in show
    assert re.search(r"^job tick \| tick \d{8}T", host.siteops("logs app tick").stdout, re.M)
    audit = json.loads(host.siteops("audit --json", check=False).stdout)
    job = [f for f in audit["findings"] if f["id"] == "site.app.job:tick"]
    assert job and job[0]["severity"] == "ok", job


def test_a_failing_job_is_reported_by_audit(host):
    commit(host, REPO, {"tick.sh": "echo broken >&2; exit 3\n"}, "broken tick")
    host.siteops("deploy app")
    wait_for(host, "systemctl show -p Result --value app-job-tick.service | grep exit-code")
    res = host.siteops("audit --json", check=False)
    job = [f for f in json.loads(res.stdout)["findings"] if f["id"] == "site.app.job:tick"][0]
    assert job["severity"] == "warning" and "exit 3" in job["message"], job
    assert res.returncode >= 1
    commit(host, REPO, {"tick.sh": TICK}, "tick fixed")
    host.siteops("deploy app")
    # Its last run stays the failed one until the fixed job has run (every 5 s).
    wait_for(host, "systemctl show -p Result --value app-job-tick.service | grep success")


def test_a_hand_edited_job_timer_is_drift_that_audit_fix_renders_again(host):
    timer = "/etc/systemd/system/app-job-tick.timer"
    host.sh(f"sed -i 's|^OnCalendar=.*|OnCalendar=daily|' {timer} && systemctl daemon-reload")
    res = host.siteops("audit --json", check=False)
    drift = [f for f in json.loads(res.stdout)["findings"] if f["id"] == f"site.app.file:{timer}"]
    assert drift and drift[0]["severity"] == "warning" and "OnCalendar=daily" in drift[0]["diff"]
    host.siteops("audit --fix", check=False)
    assert "OnCalendar=*:*:0/5" in host.sh(f"cat {timer}").stdout
    assert "*:*:00/5" in host.sh("systemctl show -p TimersCalendar app-job-tick.timer").stdout
    assert host.siteops("audit app", check=False).returncode == 0


def test_logs_follow_a_running_worker(host):
    host.sh("rm -f /tmp/follow.log; setsid timeout 12 "
            "/opt/siteops-src/bin/logs app worker -f -n 0 >/tmp/follow.log 2>&1 &")
    time.sleep(1.5)
    push(host, "followed")
    wait_for(host, "grep -x 'worker q | processed followed' /tmp/follow.log")


def test_worker_and_job_logs_are_rotated_and_the_worker_keeps_writing(host):
    """Worker and job logs grow like the web ones: logrotate takes them too
    (copytruncate: systemd keeps the file open for the worker)."""
    logs = f"{SITE}/shared/logs"
    host.sh(f"test -s {logs}/worker-q.log && test -s {logs}/job-tick.log")
    host.sh("logrotate -f /etc/logrotate.d/siteops-app")
    rotated = host.sh(f"ls {logs}").stdout.split()
    assert {"worker-q.log.1", "job-tick.log.1"} <= set(rotated), rotated
    push(host, "after-rotation")
    wait_for(host, f"grep -x 'processed after-rotation' {logs}/worker-q.log")


def test_a_redeploy_with_unchanged_requirements_reuses_the_venv(host):
    before = live(host)
    commit(host, REPO, {"app.py": APP.replace("v?", "v?2")}, "app only")
    t0 = time.monotonic()
    out = host.siteops("deploy app").stdout
    seconds = time.monotonic() - t0
    rid = live(host)
    assert f"==> reuse: cp -a --reflink=auto -- {SITE}/releases/{before}/.venv" in out
    assert "==> venv" not in out, out
    # The copy is the new release's own, its scripts point at it.
    assert host.sh(f"head -1 {SITE}/releases/{rid}/.venv/bin/pip").stdout.strip() == \
        f"#!{SITE}/releases/{rid}/.venv/bin/python3"
    assert host.sh(f"{SITE}/releases/{rid}/.venv/bin/pip --version").stdout.startswith("pip ")
    assert host.sh(f"stat -c %i {SITE}/releases/{rid}/.venv/bin/pip").stdout != \
        host.sh(f"stat -c %i {SITE}/releases/{before}/.venv/bin/pip").stdout
    # New workers at the other offset; the old ones stopped after the switch.
    assert states(host, "app-worker@q-1-1.service", "app-worker@q-1-0.service") == \
        ["active", "inactive"]
    if " when it was stopped" in out:  # seen on Debian 13 in CI: shown, to learn why
        warnings.warn("an old worker ended failed: " + out[out.index(" when it was stopped")
                                                           - 120:][:400])
    print(f"redeploy reusing the venv: {seconds:.1f} s")
    # A changed requirements.txt installs afresh.
    commit(host, REPO, {"requirements.txt": "# pinned nothing\n"}, "requirements")
    out = host.siteops("deploy app").stdout
    assert "==> venv: python3 -m venv .venv" in out and "==> reuse" not in out


def test_jobs_enqueued_the_moment_a_deploy_returns_go_to_the_new_workers_only(host):
    """The old workers have exited when deploy (or rollback) returns: a job
    enqueued then is never taken by the old release's code."""
    for round_ in range(3):
        commit(host, REPO, {"app.py": APP.replace("v?", f"v?q{round_}")}, f"queue {round_}")
        host.siteops("deploy app")
        for i in range(10):
            push(host, f"after-{round_}-{i}")
        rid = live(host)
        taken = wait_for(host, f"n=$(grep -c '^after-{round_}-' {SITE}/shared/uploads/taken.txt); "
                               f"[ \"$n\" -ge 10 ] && grep '^after-{round_}-' "
                               f"{SITE}/shared/uploads/taken.txt")
        by = [line.split()[1] for line in taken.splitlines()]
        assert by == [rid] * 10, (round_, rid, taken)
    # The same for a rollback.
    target = [r for r, rel in registry(host)["app"]["releases"].items()
              if rel["result"] == "ok" and r != live(host)][-1]
    host.siteops(f"rollback app --to {target}")
    for i in range(10):
        push(host, f"back-{i}")
    taken = wait_for(host, f"n=$(grep -c '^back-' {SITE}/shared/uploads/taken.txt); "
                           f"[ \"$n\" -ge 10 ] && grep '^back-' {SITE}/shared/uploads/taken.txt")
    assert [line.split()[1] for line in taken.splitlines()] == [target] * 10, taken


def test_a_failing_migration_stops_the_deploy_and_the_live_release_serves(host):
    before, served = live(host), page(host)
    commit(host, REPO, {"migrate.sh": "echo 'relation missing' >&2; exit 4\n"}, "bad migration")
    res = host.siteops("deploy app", check=False)
    assert res.returncode == 1
    assert "release failed (exit 4): sh migrate.sh; nothing was switched" in res.stderr
    assert "relation missing" in res.stderr
    assert live(host) == before and page(host) == served
    commit(host, REPO, {"migrate.sh": MIGRATE}, "migration fixed")
    host.siteops("deploy app")


def test_config_set_under_load_drops_no_request_and_keeps_every_character(host):
    value = """it's "$5" `x` \\ #1"""
    load = Load(host, "app.test")
    host.sh("/opt/siteops-src/bin/config app set GREETING", input=value)
    time.sleep(1)
    samples, failed = load.failed()
    assert len(samples) > 50 and failed == [], failed[:5]
    assert page(host).endswith(f"greeting={value!r}\n")
    listed = host.siteops("config app").stdout
    assert "GREETING=********" in listed and "$5" not in listed
    assert "$5" not in host.sh("cat /var/log/siteops/actions.jsonl").stdout
    assert "$5" in host.siteops("config app --show").stdout
    assert host.sh(f"stat -c '%a %U' {SITE}/shared/.env").stdout.strip() == "600 app"
    # The deploy user reads config and logs through its sudo rule.
    out = host.sh("runuser -u deploy -- sudo -n /opt/siteops/bin/config app").stdout
    assert "GREETING=********" in out
    host.sh("runuser -u deploy -- sudo -n /opt/siteops/bin/logs app -n 1")
    res = host.siteops("config app set PORT=1", check=False)
    assert res.returncode == 2 and "set per instance" in res.stderr


def test_rollback_says_it_does_not_undo_migrations(host):
    out = host.siteops("rollback app").stdout
    assert "are not undone: database migrations they ran stay applied" in out


def test_a_procfile_app_deploys_unchanged(host):
    host.siteops("add-site proc --domain proc.test --components frontend")
    commit(host, "/srv/repos/proc", {
        "Procfile": "web: python3 app.py --port $PORT\nworker: sh worker.sh\n"
                    "release: echo released > uploads/release.txt\n",
        "app.py": APP.replace('int(os.environ["PORT"])', "int(__import__('sys').argv[2])"),
        "worker.sh": "echo procfile worker up; exec sleep infinity\n"}, "proc")
    host.siteops("deploy proc --repo /srv/repos/proc")
    assert host.sh("curl -sS -H 'Host: proc.test' http://127.0.0.1/").stdout.startswith("v?")
    assert host.sh("systemctl is-active proc-worker@worker-1-0.service").stdout.strip() == "active"
    assert host.sh("cat /srv/sites/proc/shared/uploads/release.txt").stdout == "released\n"


def test_the_readme_path_serves_a_web_only_app_a_web_and_api_app_and_a_static_site(host):
    """The README's add-site (components frontend and api by default), then
    what the app declares decides what runs: nginx sends a component's paths
    to the one that runs."""
    host.siteops("add-site du --domain du.test")

    def get(path: str) -> str:  # who answered (PYTHON_APP: its SITE variable) and for what
        answer = host.sh(f"curl -sS -H 'Host: du.test' http://127.0.0.1{path}").stdout.split()
        return f"{answer[0]} {answer[-1]}\n" if "python" in answer else " ".join(answer) + "\n"

    units = lambda: sorted(host.sh("systemctl list-units --plain --no-legend --state=active "  # noqa: E731
                                   "'du-*@*.service' | cut -d' ' -f1").stdout.split())

    # A web-only Procfile app (web, release, worker): no api is started.
    commit(host, "/srv/repos/du", {
        "Procfile": "web: env SITE=web python3 app.py\nrelease: echo migrated\n"
                    "worker: sh -c 'exec sleep infinity'\n",
        "app.py": PYTHON_APP}, "web only")
    out = host.siteops("deploy du --repo /srv/repos/du").stdout
    assert "note: the app declares no api" in out and "nginx sends its requests to frontend" \
        in out, out
    assert "ERR_PNPM" not in out
    assert get("/") == "web /\n" and get("/api/orders") == "web /api/orders\n"
    front, api = (registry(host)["du"]["ports"][c] for c in ("frontend", "api"))
    assert units() == [f"du-frontend@{front}.service", "du-worker@worker-1-0.service"], units()

    # siteops.toml declares both: /api/ goes to the api, the rest to the frontend.
    commit(host, "/srv/repos/du", {
        "Procfile": None, "siteops.toml": '[frontend]\nstart = "env SITE=front python3 app.py"\n'
                                          '[api]\nstart = "env SITE=api python3 app.py"\n'},
           "web+api")
    out = host.siteops("deploy du").stdout
    assert "declares no" not in out, out
    assert get("/") == "front /\n" and get("/api/orders") == "api /api/orders\n"
    assert units() == [f"du-api@{api + 1}.service", f"du-frontend@{front + 1}.service"], units()

    # A static site: its files, every path through the front component.
    commit(host, "/srv/repos/du", {
        "siteops.toml": 'runtime = "static"\nstatic_dir = "public"\n', "app.py": None,
        "public/index.html": "<h1>static du</h1>\n"}, "static")
    out = host.siteops("deploy du").stdout
    assert "note: the app declares no api" in out, out
    assert get("/") == "<h1>static du</h1>\n"
    assert host.sh("curl -s -o /dev/null -w '%{http_code}' -H 'Host: du.test' "
                   "http://127.0.0.1/api/x").stdout == "404"  # the static server's answer
    assert units() == [f"du-frontend@{front}.service"], units()
    doc = json.loads(host.siteops("audit du --json", check=False).stdout)
    bad = [f for f in doc["findings"] if f["severity"] != "ok"]
    assert bad == [], bad

    # The operator chose both components: the app must provide each.
    host.siteops("add-site du --domain du.test --components frontend,api")
    res = host.siteops("deploy du", check=False)
    assert res.returncode != 0 and "no start command for component api" in res.stderr, \
        res.stderr
    assert "deploy --start api=COMMAND" in res.stderr and "ERR_PNPM" not in res.stderr
    assert get("/") == "<h1>static du</h1>\n"  # the live release kept serving


def test_maintenance_answers_503_with_retry_after_while_the_app_keeps_running(host):
    def get(path: str = "/") -> tuple[str, str]:
        out = host.sh(f"curl -sS -i -H 'Host: app.test' http://127.0.0.1{path}").stdout
        head, _, body = out.partition("\n\n")  # text mode: \r\n read as \n
        return head, body
    load = Load(host, "app.test")
    host.siteops("maintenance app on --message 'Moving the <b>database</b>' --retry-after 120")
    head, body = get()
    assert head.startswith("HTTP/1.1 503") and "Retry-After: 120" in head, head
    assert "Cache-Control: no-store" in head
    assert "Moving the &lt;b&gt;database&lt;/b&gt;" in body
    assert get("/api/x")[0].startswith("HTTP/1.1 503")
    # The ACME challenge path still answers; the app itself still runs.
    host.sh("mkdir -p /var/www/siteops-acme/.well-known/acme-challenge && "
            "echo token > /var/www/siteops-acme/.well-known/acme-challenge/t")
    assert get("/.well-known/acme-challenge/t")[1] == "token\n"
    entry = registry(host)["app"]
    port = entry["ports"]["frontend"] + entry["live"]["offset"]
    assert host.sh(f"curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/"
                   ).stdout == "200"
    # A deploy keeps the site in maintenance; audit says it is left there.
    host.siteops("deploy app")
    assert get()[0].startswith("HTTP/1.1 503")
    doc = json.loads(host.siteops("audit app --json", check=False).stdout)
    found = {f["id"]: f["severity"] for f in doc["findings"]}
    assert found["site.app.maintenance"] == "warning"
    assert [i for i, sev in found.items() if i.startswith("site.app.file:") and sev != "ok"] == []
    assert "in maintenance since" in host.siteops("maintenance app").stdout
    host.siteops("maintenance app off")
    head, _ = get()
    assert head.startswith("HTTP/1.1 200"), head
    samples, failed = load.failed()
    # Only 503s while it was on: no connection failed, no 5xx but the page's.
    assert {s[2] for s in failed} <= {503} and len(samples) > len(failed) > 0, \
        {s[2] for s in failed}
    doc = json.loads(host.siteops("audit app --json", check=False).stdout)
    assert [f for f in doc["findings"] if f["id"] == "site.app.maintenance"][0]["severity"] == "ok"


def replace_like_dpkg(box, path: str) -> None:
    """A new copy of path put in its place by rename(2), as dpkg installs an
    upgraded file: running processes keep the old, now deleted, one."""
    box.sh(f"cp -p {path} {path}.dpkg-new && mv {path}.dpkg-new {path}")


def test_processes_running_replaced_code_move_onto_it_with_no_failed_request(host):
    """A security update of Python and of nginx, as dpkg installs them, under
    load: outdated names the site's app and nginx, --restart moves the app to
    fresh instances and nginx to its new binary in place, audit is clean after."""
    for path in ("/usr/bin/python3.11", "/usr/sbin/nginx"):
        if host.sh(f"test -e {path}", check=False).returncode == 0:
            replace_like_dpkg(host, path)
    python = host.sh("readlink -f /usr/bin/python3").stdout.strip()
    replace_like_dpkg(host, python)
    res = host.siteops("outdated --json", check=False)
    found = json.loads(res.stdout)
    entry = registry(host)["app"]
    app = f"app-frontend@{entry['ports']['frontend'] + entry['live']['offset']}.service"
    assert res.returncode == 1 and python in found[app], found
    assert found["nginx.service"] == ["/usr/sbin/nginx"], found
    doc = json.loads(host.siteops("audit --json", check=False).stdout)
    finding = next(f for f in doc["findings"] if f["id"] == "host.outdated")
    assert finding["severity"] == "warning" and app in finding["message"]
    master = host.sh("cat /run/nginx.pid").stdout.strip()
    load = Load(host, "app.test", rate=50)
    # The way it runs on a server: the hook bootstrap puts after each run of
    # unattended-upgrades (the upgrade itself off here: the mirror's updates
    # of the day are not this test's).
    host.sh("echo 'APT::Periodic::Enable \"0\";' > /etc/apt/apt.conf.d/99siteops-test")
    try:
        host.sh("systemctl start apt-daily-upgrade.service")
    finally:
        host.sh("rm /etc/apt/apt.conf.d/99siteops-test")
    journal = host.sh("journalctl -u apt-daily-upgrade.service -o cat").stdout
    assert "nginx.service" in journal and "moved to its new code" in journal, journal[-2000:]
    samples, failed = load.failed()
    print(f"outdated --restart: {len(samples)} requests, {len(failed)} failed")
    assert len(samples) > 100 and failed == [], failed[:5]
    assert host.siteops("outdated", check=False).returncode == 0
    assert host.sh("systemctl is-active nginx").stdout.strip() == "active"
    assert host.sh("cat /run/nginx.pid").stdout.strip() != master
    assert host.sh("systemctl show -p MainPID --value nginx").stdout.strip() == \
        host.sh("cat /run/nginx.pid").stdout.strip()
    assert "app.test" in host.sh("curl -sS -o /dev/null -w '%{http_code}' -H 'Host: app.test' "
                                 "http://127.0.0.1/ && echo ' app.test'").stdout
    doc = json.loads(host.siteops("audit --json", check=False).stdout)
    assert next(f for f in doc["findings"] if f["id"] == "host.outdated")["severity"] == "ok"
    assert host.sh("systemctl reload nginx && systemctl is-active nginx").stdout.strip() == "active"


def test_alerts_reach_a_webhook_and_an_inbox_once_per_change(host):
    """A webhook receiver and an SMTP sink on the box's loopback; events caused
    for real: a failed deploy, a stopped Redis and its recovery, a backup gone
    stale (its snapshot made with an old time) and its recovery, a receiver
    down while a deploy fails (sent by the next run). Each arrives once; no
    generated secret is in any message."""
    start_receivers(host, smtp=True)
    host.siteops("notify add webhook http://127.0.0.1:8765/hook")
    host.siteops("notify add email ops@example.com --smtp 127.0.0.1:2525 --from so@example.com")
    assert "webhook-1" in host.siteops("notify list").stdout
    host.siteops("audit", check=False)  # what is open now is the baseline
    base = len(hooks(host))
    host.siteops("notify test")
    assert [e["kind"] for e in hooks(host)[base]["events"]] == ["test"]
    assert "Subject: siteops on" in host.sh("cat /root/mails.txt").stdout
    # A deploy that fails.
    res = host.siteops("deploy app --ref no-such-ref", check=False)
    assert res.returncode != 0
    failed = events_of(host, "failed")
    assert len(failed) == 1 and "deploy app --ref no-such-ref" in failed[0]["text"]
    # A stopped Redis: said once, not again by the next audit, its recovery once.
    host.sh("systemctl stop app-redis.service")
    try:
        host.siteops("audit", check=False)
        host.siteops("audit", check=False)
    finally:  # its logs in the failure, if it does not start again
        host.sh("systemctl start app-redis.service || { journalctl -u app-redis.service -n 30 "
                "--no-pager; tail -n 20 /srv/sites/app/shared/logs/redis.log; exit 1; }")
    down = [e for e in events_of(host, "problem") if e["check"] == "site.app.unit:app-redis.service"]
    assert len(down) == 1 and down[0]["severity"] == "critical"
    host.siteops("audit", check=False)
    back = [e for e in events_of(host, "recovered") if e["check"] == "site.app.unit:app-redis.service"]
    assert len(back) == 1
    # A stopped instance (its finding names its port), then a redeploy that
    # moves the site to other ports: its recovery is said, once. A channel
    # added while it is open is told of it.
    unit = f"app-frontend@{registry(host)['app']['ports']['frontend'] + registry(host)['app']['live']['offset']}.service"
    host.sh(f"systemctl stop {unit}")
    host.siteops("audit", check=False)
    host.siteops("audit", check=False)
    assert len([e for e in events_of(host, "problem") if e["check"] == f"site.app.unit:{unit}"]) == 1
    host.siteops("notify add webhook http://127.0.0.1:8765/late")
    assert [e["kind"] for e in hooks(host)[-1]["events"]
            if e["check"] == f"site.app.unit:{unit}"] == ["still"]
    host.siteops("notify remove webhook-2")
    host.siteops("deploy app")
    host.siteops("audit", check=False)
    host.siteops("audit", check=False)
    assert len([e for e in events_of(host, "recovered")
                if e["check"] == f"site.app.unit:{unit}"]) == 1
    # A stale backup: the site's only snapshot made three days ago.
    restic = ("RESTIC_REPOSITORY=/var/backups/siteops RESTIC_PASSWORD_FILE="
              "/etc/siteops/restic-password restic --quiet")
    host.siteops("backup app")
    ids = [s["short_id"] for s in json.loads(host.sh(f"{restic} snapshots --tag site:app --json"
                                                     ).stdout)]
    host.sh(f"{restic} forget {' '.join(ids)} && {restic} backup --tag site:app "
            "--time '2026-01-01 00:00:00' /var/lib/siteops/backup/app")
    host.siteops("audit", check=False)
    stale = [e for e in events_of(host, "problem") if e["check"] == "site.app.backup"]
    assert len(stale) == 1 and "ago" in stale[0]["text"], stale
    host.siteops("backup app")
    host.siteops("audit", check=False)
    assert len([e for e in events_of(host, "recovered") if e["check"] == "site.app.backup"]) == 1
    # The receiver down: the failing deploy is not held up, the next run says it.
    host.sh("pkill -f '[r]eceivers.py'")
    started = time.monotonic()
    res = host.siteops("deploy app --ref still-no-such-ref", check=False)
    assert res.returncode != 0 and time.monotonic() - started < 30
    assert "not delivered" in res.stdout + res.stderr
    start_receivers(host, smtp=False, fresh=False)
    host.siteops("audit", check=False)
    assert len([e for e in events_of(host, "failed") if "still-no-such-ref" in e["text"]]) == 1
    # No generated secret in anything sent.
    env = host.sh(f"cat {SITE}/shared/.env").stdout
    sent = host.sh("cat /root/hooks.jsonl /root/mails.txt").stdout
    secrets = [line.split("=", 1)[1] for line in env.splitlines()
               if "=" in line and len(line.split("=", 1)[1]) >= 16]
    assert secrets and not [s for s in secrets if s in sent]
    host.siteops("notify remove webhook-1")
    host.siteops("notify remove email-1")
    host.sh("pkill -f '[r]eceivers.py'")
