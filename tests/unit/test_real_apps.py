"""Release commands, workers, jobs, Procfile, dependency reuse, config and
logs: the logic and command plans (the box tier proves them on systemd)."""

import io
import json

import pytest

from siteops import envfile, facts, instances, manifest, releases
from siteops import units
from siteops.commands import config, logs
from siteops.ops import audit as audit_op
from siteops.errors import UsageError
from siteops.logfiles import tail
from siteops.manifest import ManifestError
from siteops.model import OK, Job, Release, Site, Worker

import test_deploy_plans
from test_deploy_plans import R1, R2, healthy, prepared_host

shop = test_deploy_plans.shop  # the fixture: site shop live on R1, R2 built

NASTY = ["plain", "two words", "it's $HOME and ${X}", 'say "hi" \\ `x`', "line1\nline2",
         "", "#not a comment", " padded ", "tab\there", "ünïcode ✓", "a=b=c", "trailing\\"]


@pytest.mark.parametrize("value", NASTY)
def test_a_value_written_to_env_reads_back_exactly(value):
    text = envfile.assign("# header\nKEEP=1\n", {"K": value})
    assert envfile.parse(text) == {"KEEP": "1", "K": value}
    again = envfile.assign(text, {"K": value + "!"})
    assert envfile.parse(again)["K"] == value + "!" and again.startswith("# header\nKEEP=1\n")


def test_env_is_read_the_way_systemd_reads_it():
    text = ("A=1\n  B = spaced out  \nC='single $x \\n'\nD=\"dq \\\" \\$ \\\\ \\q\"\n"
            "# comment\n; also\nE=esc\\ aped\nF='multi\nline'\nnot a setting\nA=2\n")
    assert envfile.parse(text) == {"A": "2", "B": "spaced out", "C": "single $x \\n",
                                   "D": 'dq " $ \\ \\q', "E": "esc aped", "F": "multi\nline"}


def test_unset_removes_every_line_of_a_key_and_keeps_the_rest():
    text = "# keep me\nA=1\nB=2\nA=3\n"
    assert envfile.assign(text, {"A": None}) == "# keep me\nB=2\n"
    assert envfile.assign(text, {"A": "x", "C": "y"}) == "# keep me\nB=2\nA=x\nC=y\n"


def test_workers_jobs_and_release_parse():
    m = manifest.parse('release = "python manage.py migrate"\n'
                       '[workers.mail]\ncommand = "python worker.py"\ncount = 2\n'
                       '[jobs.tick]\nschedule = "*:*:0/5"\ncommand = "python tick.py"\n')
    assert m.release == "python manage.py migrate"
    assert m.workers == {"mail": Worker("python worker.py", 2)}
    assert m.jobs == {"tick": Job("*:*:0/5", "python tick.py")}


@pytest.mark.parametrize("text, message", [
    ('[workers.Mail]\ncommand = "x"', "invalid worker name 'Mail'"),
    ('[workers.mail-2]\ncommand = "x"', "invalid worker name"),
    ('[workers.m]\ncommand = "x"\ncount = 0', "count must be a number, 1-16"),
    ('[workers.m]\ncommand = "x"\nnice = 1', r"\[workers.m\] takes command and optionally count"),
    ('[jobs.j]\ncommand = "x"', r"\[jobs.j\] takes command, schedule"),
    ('workers = "x"', "workers must be tables"),
    ('[workers.m]\ncommand = "a | b"', "without a shell"),
    ('[jobs.j]\nschedule = "daily"\ncommand = "+/bin/sh"', "may not start with"),
    ('[workers.m]\ncommand = "echo $SECRET"', "'%' and '\\$' are not allowed"),
])
def test_bad_workers_and_jobs_are_refused(text, message):
    with pytest.raises(ManifestError, match=message):
        manifest.parse(text)


def test_a_procfile_gives_web_release_and_workers():
    m = manifest.load(None, "# Heroku\nweb: gunicorn app:app --bind 127.0.0.1:$PORT\n"
                            "worker: celery -A proj worker\n\nrelease: ./manage.py migrate && true\n")
    assert m.web == "gunicorn app:app --bind 127.0.0.1:${PORT}"
    assert m.release == "./manage.py migrate && true"  # run by a shell, like build steps
    assert m.workers == {"worker": Worker("celery -A proj worker", 1)}
    assert manifest.start_commands(m, "python", ["frontend", "api"], {"api": "x"}, {})[0] == {
        "frontend": "gunicorn app:app --bind 127.0.0.1:${PORT}", "api": "x"}
    assert manifest.start_commands(m, "python", ["api"], {}, {})[0]["api"].startswith("gunicorn")
    # siteops.toml wins over a Procfile.
    assert manifest.load('[workers.a]\ncommand = "x"', "worker: y").workers == {
        "a": Worker("x", 1)}
    with pytest.raises(ManifestError, match="Procfile line 1: expected 'type: command'"):
        manifest.parse_procfile("web gunicorn\n")
    with pytest.raises(ManifestError, match="Procfile line 2: .*without a shell"):
        manifest.parse_procfile("web: x\nworker: a && b\n")


def test_dependencies_are_reused_only_for_the_same_lockfiles_commands_and_runtime():
    m = manifest.Manifest()
    steps = manifest.build_steps(m, "python", {"requirements.txt"}, None, False)
    key = manifest.deps_key(m, "python", steps, {"requirements.txt": "flask==3\n"}, "3.11")
    assert key == manifest.deps_key(m, "python", steps + [("build", "x")],
                                    {"requirements.txt": "flask==3\n"}, "3.11")
    assert key != manifest.deps_key(m, "python", steps, {"requirements.txt": "flask==4\n"}, "3.11")
    assert key != manifest.deps_key(m, "python", steps, {"requirements.txt": "flask==3\n"}, "3.12")
    assert manifest.deps_key(manifest.Manifest(install="make deps"), "python", steps, {}, "") is None
    assert manifest.deps_key(m, "command", [], {}, "") is None
    site = Site(name="shop", slot=0, releases={
        "r1": Release(result=OK, deps=key), "r2": Release(result=OK, deps=key),
        "r3": Release(result="failed", deps=key), "r4": Release(result=OK, deps="other")})
    assert releases.deps_donor(site, key, lambda r: True) == "r2"
    assert releases.deps_donor(site, key, lambda r: r != "r2") == "r1"
    assert releases.deps_donor(site, None, lambda r: True) is None
    reused = manifest.reuse_steps("python", steps + [("build", "make")], "/s/releases/r2",
                                  "/s/releases/r5")
    assert [label for label, _ in reused] == ["reuse", "build"]
    assert reused[0][1].startswith("cp -a --reflink=auto -- /s/releases/r2/.venv "
                                   "/s/releases/r5/.venv && ")
    assert "sed -i -e 's|/s/releases/r2/|/s/releases/r5/|g'" in reused[0][1]


def test_worker_instances_are_named_by_type_number_and_offset():
    workers = {"mail": Worker("x", 2), "cron": Worker("y", 1)}
    assert units.worker_instances("shop", workers, 1) == {
        "shop-worker@cron-1-1.service": "cron", "shop-worker@mail-1-1.service": "mail",
        "shop-worker@mail-2-1.service": "mail"}


def test_the_switch_starts_new_workers_beside_the_old_and_stops_the_old_after(root, shop):
    workers = {"mail": {"command": "/bin/true", "count": 1}}
    for rid in (R1, R2):
        shop.releases[rid].workers = {"mail": Worker("/bin/true")}
    path = root / "var/lib/siteops/registry.json"
    doc = json.loads(path.read_text())
    for rid in (R1, R2):
        doc["sites"]["shop"]["releases"][rid]["workers"] = workers
    path.write_text(json.dumps(doc))
    host, runner = prepared_host(root, shop, healthy())
    instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    plan = [" ".join(a.argv) for a in host.actions if a.kind == "run"]
    start = next(p for p in plan if p.startswith("systemctl start"))
    assert start == "systemctl start shop-frontend@3101.service shop-worker@mail-1-1.service"
    # The old worker's stop is waited for (no job taken by old code once the
    # command returns); the old web instance's is not.
    assert plan.index(start) < plan.index("systemctl reload-or-restart nginx") < plan.index(
        "systemctl stop shop-worker@mail-1-0.service") < plan.index(
        "systemctl stop --no-block shop-frontend@3100.service")
    dropin = (root / "etc/systemd/system/shop-worker@mail-1-1.service.d/siteops-release.conf")
    assert "StandardOutput=append:" in dropin.read_text() and R2 in dropin.read_text()


def test_a_held_site_switches_its_web_instances_and_starts_no_worker(root, shop):
    """move-site's copy (and its frozen source): deploys and restarts leave the
    workers stopped and not enabled at boot."""
    workers = {"mail": {"command": "/bin/true", "count": 1}}
    path = root / "var/lib/siteops/registry.json"
    doc = json.loads(path.read_text())
    doc["sites"]["shop"]["held"] = True
    for rid in (R1, R2):
        shop.releases[rid].workers = {"mail": Worker("/bin/true")}
        doc["sites"]["shop"]["releases"][rid]["workers"] = workers
    path.write_text(json.dumps(doc))
    shop.held = True
    host, runner = prepared_host(root, shop, healthy())
    instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    plan = [" ".join(a.argv) for a in host.actions if a.kind == "run"]
    assert "systemctl start shop-frontend@3101.service" in plan
    assert not [p for p in plan if "worker@" in p and ("start" in p or "enable" in p)], plan
    assert units.live_instances(shop) == ["shop-frontend@3100.service"]
    assert "shop-worker@mail-1-0.service" in units.live_instances(shop, held=False)


def args(*argv):
    return config.build_parser().parse_args(["shop", *argv])


def test_config_changes_from_argv_and_stdin():
    assert config.changes(args("set", "A=1", "B=x=y")) == {"A": "1", "B": "x=y"}
    assert config.changes(args("set", "TOKEN"), io.BytesIO(b"s3cret\n")) == {"TOKEN": "s3cret"}
    assert config.changes(args("unset", "A", "B")) == {"A": None, "B": None}


@pytest.mark.parametrize("argv, message", [
    (("set",), "needs at least one KEY"),
    (("set", "1A=x"), "invalid key '1A'"),
    (("set", "PORT=1"), "set per instance"),
    (("set", "DATABASE_URL=x"), "managed by siteops"),
    (("unset", "A=1"), "unset takes keys"),
    (("set", "A", "B"), "only one KEY"),
    (("set", "A=x\0y"), "NUL"),
])
def test_bad_config_is_refused(argv, message):
    with pytest.raises(UsageError, match=message):
        config.changes(args(*argv), io.BytesIO(b""))


def test_config_never_logs_or_lists_values_unless_asked():
    assert config.public_argv(["shop", "set", "TOKEN=s3cret", "--no-restart"]) == [
        "shop", "set", "TOKEN=********", "--no-restart"]
    assert config.listing("A=s3cret\nB=\n", show=False) == ["A=********", "B=(empty)"]
    assert config.listing("A='a b'\n", show=True) == ["A='a b'"]


def test_config_set_rewrites_env_and_moves_the_live_release(root, shop, monkeypatch):
    env = root / "srv/sites/shop/shared/.env"
    env.write_text("# mine\nNODE_ENV=production\n")
    moved = []
    monkeypatch.setattr(instances, "restart", lambda host, site, reason: moved.append(reason))
    host, _ = prepared_host(root, shop, healthy())
    config.run(host, args("set", "GREETING=it's $5"))
    assert envfile.parse(env.read_text())["GREETING"] == "it's $5"
    assert env.read_text().startswith("# mine\nNODE_ENV=production\n")
    assert moved == ["settings changed"]
    config.run(host, args("set", "GREETING=it's $5"))  # unchanged: no restart
    config.run(host, args("unset", "GREETING", "--no-restart"))
    assert "GREETING" not in env.read_text() and moved == ["settings changed"]


def test_log_sources_and_filters():
    assert [logs.source(n) for n in ("frontend.log", "frontend-error.log", "worker-mail.log",
                                     "job-tick.log", "nginx-access.log")] == [
        "frontend", "frontend", "worker mail", "job tick", "nginx"]
    assert logs.matches("worker-mail.log", "mail") and logs.matches("worker-mail.log", "worker")
    assert logs.matches("api-error.log", "web") and not logs.matches("api.log", "frontend")
    assert logs.matches("job-tick.log", "job") and not logs.matches("job-tick.log", "mail")


def test_tail_reads_only_the_end():
    fh = io.BytesIO(b"".join(b"line %d\n" % i for i in range(100000)))
    assert tail(fh, 3, block=100) == [b"line 99997", b"line 99998", b"line 99999"]
    assert tail(io.BytesIO(b"one\ntwo"), 5) == [b"one", b"two"]
    assert tail(io.BytesIO(b"x\n"), 0) == []


def test_audit_compares_the_live_releases_job_units_and_fix_renders_them(root, shop):
    jobs = {"tick": {"schedule": "hourly", "command": "/bin/true"}}
    shop.releases[R1].jobs = {"tick": Job("hourly", "/bin/true")}
    path = root / "var/lib/siteops/registry.json"
    doc = json.loads(path.read_text())
    doc["sites"]["shop"]["releases"][R1]["jobs"] = jobs
    path.write_text(json.dumps(doc))
    host, _ = prepared_host(root, shop, healthy())
    expected = facts.expected_files(host, shop, (1, 22), None)
    service = str(root / "etc/systemd/system/shop-job-tick.service")
    timer = str(root / "etc/systemd/system/shop-job-tick.timer")
    assert f"releases/{R1}" in expected[service] and "OnCalendar=hourly" in expected[timer]
    audit_op.repair(host, shop, {"render"})
    assert (root / "etc/systemd/system/shop-job-tick.timer").read_text() == expected[timer]
    # Not yet deployed: no job, nothing expected.
    shop.live = None
    assert not [p for p in facts.expected_files(host, shop, (1, 22), None) if "-job-" in p]
