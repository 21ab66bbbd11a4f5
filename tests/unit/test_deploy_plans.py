"""Command plans of the health-gated switch, deploy --dry-run and rollback,
from a recording fake runner over a temporary root."""

import json
import os
import shlex
import signal

import pytest

from siteops import instances, model, network, nginx, registry, releases, signals, systemd
from siteops import host as siteops_host
from siteops.errors import Interrupted, SiteopsError
from siteops.ops import deploy as deploy_op
from siteops.ops import sites as sites_op
from siteops.commands import deploy, limits, rollback

from fakes import CHANGES, Rule, make_host, planned_commands

R1, R2, R3 = "20261125T200000Z", "20261125T201000Z", "20261125T202000Z"
RUNS = {"commands": {"frontend": "/usr/bin/env node server.js"},
        "health": {"frontend": "/healthz"}, "health_timeout": 1}


def held_by(port, pid):
    """`ss -p` output: a listener on port held by process pid."""
    return (["ss", "-H", "-t", "-u", "-l", "-n", "-p"], 0,
            f'tcp LISTEN 0 511 127.0.0.1:{port} 0.0.0.0:* users:(("app",pid={pid},fd=3))\n')


def healthy(curl="200", restarts=0, listener_pid=3101):
    return [(["ss", "-H", "-t", "-l", "-n"], 0, "LISTEN 0 511 127.0.0.1:3100 0.0.0.0:*\n"),
            held_by(3101, listener_pid),
            (["ss"], 0, ""),
            (["systemctl", "show", "-p", "LoadState"], 0, "not-found\n"),
            (["systemctl", "show"], 0, f"ActiveState=active\nNRestarts={restarts}\n"),
            (["curl"], 0, curl),
            (["nginx", "-v"], 0, "", "nginx version: nginx/1.22.1"),
            (["systemctl", "is-active"], 3, "")] + CHANGES


@pytest.fixture
def shop(root, monkeypatch):
    """A registry with site shop live on R1 (port 3100) and R2 built, files owned by us.
    Process 3101 runs in shop-frontend@3101.service, 666 in blog-rogue.service."""
    units = {3100: "shop-frontend@3100.service", 3101: "shop-frontend@3101.service",
             3102: "shop-frontend@3102.service",
             666: "blog-rogue.service"}
    monkeypatch.setattr(network, "unit_of", lambda pid: units.get(pid, ""))
    monkeypatch.setattr(siteops_host, "uid_of", lambda name: os.getuid())
    monkeypatch.setattr(siteops_host, "gid_of", lambda name: os.getgid())
    for rid in (R1, R2):
        (root / f"srv/sites/shop/releases/{rid}").mkdir(parents=True)
    (root / "srv/sites/shop/shared/logs").mkdir(parents=True)
    (root / "etc/nginx/sites-enabled").mkdir(parents=True)  # as bootstrap leaves it
    (root / "srv/sites/shop/current").symlink_to(f"releases/{R1}")
    site = {"name": "shop", "slot": 0, "state": "ready", "domains": ["shop.test"],
            "components": ["frontend"], "commands": {"frontend": "pnpm start"},
            "ports": {"frontend": 3100, "redis": 5000}, "repo": "/srv/repos/shop",
            "live": {"release": R1, "offset": 0},
            "releases": {R1: dict(RUNS, result="ok"), R2: dict(RUNS, result="ok")}}
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(
        json.dumps({"version": 1, "sites": {"shop": site}}))  # an older file: upgraded on load
    return model.site_from_json(site)


def prepared_host(root, site, rules):
    host, runner = make_host(root, rules, dry_run=False)
    nginx.ensure_site(host, site)
    host.actions.clear()
    return host, runner


def test_switch_starts_beside_checks_health_then_moves_nginx_and_current(root, shop):
    host, runner = prepared_host(root, shop, healthy())
    marks = []
    site = instances.switch(host, shop, R2, shop.releases[R2], marks.append)
    assert planned_commands(host) == [
        "systemctl start shop-frontend@3101.service",
        "systemctl reload-or-restart nginx",
        "systemctl --no-reload enable --quiet shop-frontend@3101.service",
        "systemctl --no-reload disable --quiet shop-frontend@3100.service",
        "systemctl stop --no-block shop-frontend@3100.service",
    ]
    # Verified before use; health checked on the new port with the site's name.
    assert ["systemd-analyze", "verify", "--man=no", "shop-frontend@3101.service"] in runner.calls
    assert any(c[0] == "curl" and c[-1] == "http://127.0.0.1:3101/healthz" and "Host: shop.test" in c
               for c in runner.calls)
    dropin = (root / "etc/systemd/system/shop-frontend@3101.service.d/siteops-release.conf").read_text()
    assert f"WorkingDirectory={root}/srv/sites/shop/releases/{R2}\n" in dropin
    assert "ExecStart=\nExecStart=/usr/bin/env node server.js\n" in dropin
    assert "127.0.0.1:3101" in (root / "etc/nginx/sites-available/shop.conf").read_text()
    assert (root / "srv/sites/shop/current").readlink().as_posix() == f"releases/{R2}"
    saved = registry.load(host).sites["shop"]
    assert saved.live == site.live == model.Live(R2, 1) and len(marks) == 1


def test_switch_of_a_sleeping_site_starts_the_release_with_its_doors_and_moves_nginx_to_them(
        root, shop):
    def sleeps(entry):
        entry.sleep_after = 900
    shop = registry.update_site(make_host(root, dry_run=False)[0], "shop", "test", sleeps)
    host, runner = prepared_host(root, shop, healthy())
    site = instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    plan = planned_commands(host)
    assert plan[0] == ("systemctl start shop-frontend@3101.service "
                       "shop-door@3101.socket shop-door@3101.service"), plan
    assert ["systemd-analyze", "verify", "--man=no", "shop-frontend@3101.service",
            "shop-door@3101.service"] in runner.calls
    # Only its door starts at boot; the instance and Redis stop when unneeded.
    assert "systemctl --no-reload enable --quiet shop-door@3101.socket" in plan
    assert ("systemctl disable --quiet shop-redis.service "
            "shop-frontend@3100.service") in plan
    dropins = root / "etc/systemd/system"
    assert "StopWhenUnneeded=yes" in (
        dropins / "shop-frontend@3101.service.d/siteops-release.conf").read_text()
    assert "ListenStream=127.0.0.1:3109" in (
        dropins / "shop-door@3101.socket.d/siteops-release.conf").read_text()
    assert "BindsTo=shop-frontend@3101.service" in (
        dropins / "shop-door@3101.service.d/siteops-release.conf").read_text()
    assert "127.0.0.1:3109" in (root / "etc/nginx/sites-available/shop.conf").read_text()
    assert site.live == model.Live(R2, 1, True)
    assert "goes back to sleep after 900s without a request" in host.out.getvalue()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_the_switchs_commit_waits_until_the_registry_says_live(root, shop,
                                                                            monkeypatch, signum):
    """Sent between `current -> releases/R2` and the registry's record of it
    (SITEOPS_KILL_BEFORE_CHANGE, the harness's switch), the signal is held
    until the release is live: nothing is put back, and the failed-deploy
    clean-up (ops.deploy.fail) leaves the release alone."""
    host, runner = prepared_host(root, shop, healthy())
    monkeypatch.setenv(siteops_host.KILL_BEFORE_CHANGE, "1")
    monkeypatch.setenv(siteops_host.KILL_SIGNAL, signal.Signals(signum).name[3:])
    previous = {s: signal.signal(s, signals.on_interrupt) for s in signals.INTERRUPTS}
    try:
        with pytest.raises(Interrupted):
            instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert registry.load(host).sites["shop"].live == model.Live(R2, 1)
    assert (root / "srv/sites/shop/current").readlink().as_posix() == f"releases/{R2}"
    assert "127.0.0.1:3101" in (root / "etc/nginx/sites-available/shop.conf").read_text()
    assert "systemctl stop shop-frontend@3101.service" not in planned_commands(host)
    host.actions.clear()
    deploy_op.fail(host, "shop", R2, shop.releases[R2], Interrupted(signum))
    assert host.actions == []  # not marked failed, not removed


@pytest.mark.parametrize("rules, message", [
    (healthy(curl="500"), "did not pass its health check GET /healthz on port 3101 within 1s"),
    (healthy(restarts=1), "shop-frontend@3101.service exited while starting"),
    # Another site's process took the port: whatever answered is not the release.
    (healthy(listener_pid=666), r"port 3101 answered, but its listener is blog-rogue.service "
                                r"\(app\), not shop-frontend@3101.service: not switching"),
])
def test_a_failed_switch_stops_the_new_instance_and_touches_nothing_live(root, shop, rules, message):
    host, runner = prepared_host(root, shop, rules)
    conf = (root / "etc/nginx/sites-available/shop.conf").read_text()
    with pytest.raises(SiteopsError, match=message):
        instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    assert planned_commands(host) == [
        "systemctl start shop-frontend@3101.service",
        "systemctl stop shop-frontend@3101.service",
    ]
    assert (root / "etc/nginx/sites-available/shop.conf").read_text() == conf
    assert (root / "srv/sites/shop/current").readlink().as_posix() == f"releases/{R1}"
    assert registry.load(host).sites["shop"].live == model.Live(R1, 0)


def test_a_spare_port_something_else_holds_is_skipped(root, shop):
    # Another site's process sits on 3101: the release starts on 3102 instead.
    rules = [(["ss", "-H", "-t", "-l", "-n"], 0, "LISTEN 0 5 127.0.0.1:3100 0.0.0.0:*\n"
                                                 "LISTEN 0 5 127.0.0.1:3101 0.0.0.0:*\n"),
             held_by(3102, 3102)] + healthy()
    host, runner = prepared_host(root, shop, rules)
    site = instances.switch(host, shop, R2, shop.releases[R2], lambda e: None)
    assert planned_commands(host)[:1] == ["systemctl start shop-frontend@3102.service"]
    assert site.live == model.Live(R2, 2)
    assert "127.0.0.1:3102" in (root / "etc/nginx/sites-available/shop.conf").read_text()


def test_a_port_taken_between_the_choice_and_the_start_is_refused_naming_its_holder(root, shop):
    host, runner = prepared_host(root, shop, [held_by(3101, 666)] + healthy())
    runner.rules.insert(0, Rule(["ss", "-H", "-t", "-l", "-n"], 0,
                                "LISTEN 0 5 127.0.0.1:3101 0.0.0.0:*\n"))
    with pytest.raises(SiteopsError, match=r"port 3101 of site shop is in use by "
                                                  r"blog-rogue.service \(app\)"):
        instances.start(host, shop, R2, shop.releases[R2], 1)
    assert planned_commands(host) == []


COMMIT = "c0ffee" * 6 + "abcd"
GIT = ["git", "-c", "protocol.ext.allow=never"]


def test_deploy_dry_run_is_the_recording_of_the_real_run(root, shop):
    # The mirror has the ref (an earlier deploy fetched it): a Node app with a
    # build script and a siteops.toml.
    mirror = f"--git-dir={root}/var/lib/siteops/mirrors/shop.git"
    (root / "var/lib/siteops/mirrors/shop.git").mkdir(parents=True)
    (root / "var/lib/siteops/mirrors/shop.git/HEAD").write_text("ref: refs/heads/main\n")
    rules = [Rule([*GIT, mirror, "rev-parse"], 0, COMMIT + "\n"),
             Rule([*GIT, mirror, "log"], 0, "Add \x1b[31mcheckout\n"),
             Rule([*GIT, mirror, "ls-tree"], 0, "package.json\nserver.js\nsiteops.toml\n"),
             Rule([*GIT, mirror, "show", f"{COMMIT}:siteops.toml"], 0,
                  '[frontend]\nstart = "node server.js"\nhealth = "/healthz"\n'),
             Rule([*GIT, mirror, "show", f"{COMMIT}:package.json"], 0,
                  '{"scripts": {"build": "node build.js"}}'),
             Rule([*GIT, mirror, "config"], 0, "/srv/repos/shop\n"),
             Rule(["which", "pnpm"], 0, "/usr/local/bin/pnpm\n"),
             Rule(["which", "node"], 0, "/usr/bin/node\n"),
             Rule(["node", "--version"], 0, "v18.19.0\n"),
             Rule(["systemctl", "list-units"], 0, "shop-frontend@3100.service loaded active\n")
             ] + healthy()
    host, runner = make_host(root, rules)
    assert deploy.main(["shop", "--ref", "v2", "--dry-run"], host) == 0
    rel = f"{root}/srv/sites/shop/releases/"
    plan = [str(a) for a in host.actions]
    rid = next(a.argv[-1].rsplit("/", 1)[1] for a in host.actions if a.argv[:3] ==
               ("runuser", "-u", "shop") and "mkdir" in a.argv)
    rel += rid
    tar = f"{root}/var/lib/siteops/tmp/shop.tar"
    sandbox = systemd.sandbox_argv(host, shop, root / "srv/sites/shop/releases" / rid,
                                   "pnpm install --prod=false", "siteops-build-shop.service")
    build = systemd.sandbox_argv(host, shop, root / "srv/sites/shop/releases" / rid,
                                 "pnpm run build", "siteops-build-shop.service")
    commands = [a for a in plan if a.startswith("+ ")]
    assert commands[-15:] == [
        "+ " + shlex.join([*GIT, mirror, "fetch", "--prune", "--quiet", "origin"]),
        "+ " + shlex.join([*GIT, mirror, "archive", "--format=tar", "-o", tar, COMMIT]),
        "+ " + shlex.join(["runuser", "-u", "shop", "--", "mkdir", "-m", "0750", "--", rel]),
        "+ " + shlex.join(["runuser", "-u", "shop", "--", "tar", "-x", "-f", "-", "-C", rel])
        + "  <<< the archive",
        *["+ " + shlex.join(["runuser", "-u", "shop", "--", "ln", "-s", f"../../shared/{item}",
                             f"{rel}/{item}"]) for item in (".env", "uploads", "logs")],
        "+ " + shlex.join(sandbox),
        "+ " + shlex.join(build),
        "+ systemctl daemon-reload",  # the fake has shop-frontend@3100 loaded: any instance
        "+ systemctl start shop-frontend@3101.service",
        "+ systemctl reload-or-restart nginx",
        "+ systemctl --no-reload enable --quiet shop-frontend@3101.service",
        "+ systemctl --no-reload disable --quiet shop-frontend@3100.service",
        "+ systemctl stop --no-block shop-frontend@3100.service",
    ]
    # The sandbox: the site's user, slice, hardening and SocketBind rules, only
    # the release and the build cache writable.
    for prop in ("User=shop", "Group=shop", "Slice=siteops-shop.slice", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "SocketBindAllow=tcp:3100-3109", "SocketBindDeny=any",
                 f"ReadWritePaths={rel} {root}/srv/sites/shop/shared/cache",
                 f"EnvironmentFile={root}/srv/sites/shop/shared/.env"):
        assert f"--property={prop}" in sandbox, prop
    # Waits are recorded, not waited for; files are written only in the plan.
    assert "wait until frontend on port 3101 answer 2xx/3xx (at most 60s)" in plan
    assert "wait until no connection is left on port(s) 3100 (at most 30s)" in plan
    assert f"symlink {root}/srv/sites/shop/current -> releases/{rid}" in plan
    assert f"write {root}/etc/systemd/system/shop-frontend@3101.service.d/siteops-release.conf " \
           "(0644 root:root)" in plan
    out = host.out.getvalue()
    assert "Add [31mcheckout" in out and "\x1b" not in out  # the subject, cleaned
    assert "would be live" in out and out.rstrip().endswith("nothing was changed")
    assert not (root / "var/lib/siteops/locks").exists()
    assert not (root / f"srv/sites/shop/releases/{rid}").exists()
    assert registry.load(host).sites["shop"].live == model.Live(R1, 0)


def test_a_first_dry_run_before_any_fetch_plans_with_an_empty_tree(root, shop):
    host, runner = make_host(root, [Rule(["git"], 128, "", "fatal: not a git repository"),
                                    Rule(["which"], 0, "/usr/bin/program\n")]
                             + healthy())
    assert deploy.main(["shop", "--repo", "/srv/repos/other", "--dry-run"], host) == 0
    out = host.out.getvalue()
    assert "HEAD is not in the mirror before the fetch runs" in out
    assert "+ git -c protocol.ext.allow=never clone --mirror --no-local --quiet -- " \
           f"/srv/repos/other {root}/var/lib/siteops/mirrors/shop.git" in out


def test_deploy_needs_a_repository_and_a_ready_site(root, shop, capsys):
    data = json.loads((root / "var/lib/siteops/registry.json").read_text())
    del data["sites"]["shop"]["repo"]
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(data))
    host, runner = make_host(root, healthy())
    assert deploy.main(["shop", "--dry-run"], host) == 2
    assert "has no repository yet: pass --repo URL" in capsys.readouterr().err
    data["sites"]["shop"]["state"] = "provisioning"
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(data))
    assert deploy.main(["shop", "--repo", "/srv/x", "--dry-run"], host) == 1
    assert "is not ready" in capsys.readouterr().err


def test_rollback_list_marks_live_and_target(root, shop):
    shop.releases[R3] = model.release_from_json(dict(RUNS, result="failed",
                                                     error="build failed (exit 1)"))
    lines = rollback.listing(shop.copy(live=model.Live(R2, 1)))
    assert lines[1].startswith(f"  {R3}") and "failed: build failed" in lines[1]
    assert lines[2].startswith(f"* {R2}") and lines[3].startswith(f"< {R1}")


@pytest.mark.parametrize("to, message", [
    (R1, "already live"), ("20200101T000000Z", "no release 20200101T000000Z"),
])
def test_rollback_refuses_impossible_targets(shop, to, message):
    with pytest.raises(SiteopsError, match=message):
        rollback.choose(shop, to)
    with pytest.raises(SiteopsError, match="no earlier good release"):
        rollback.choose(shop, None)  # R1 is live and the oldest


def test_refresh_switches_only_when_a_component_template_changed(root, shop):
    host, runner = prepared_host(root, shop, healthy())
    assert instances.refresh(host, shop, ["shop-redis.service", "siteops-shop.slice"]) is shop
    assert planned_commands(host) == []
    site = instances.refresh(host, shop, ["shop-frontend@.service"])
    assert site.live == model.Live(R1, 1)  # same release, fresh instance
    plan = planned_commands(host)  # recover first (the fake says 3100 is stopped: started)
    start = plan.index("systemctl start shop-frontend@3101.service")
    assert "systemctl daemon-reload" not in plan  # 3101 is new to the manager: none needed
    assert plan.index("systemctl --no-reload enable --now shop-frontend@3100.service") < start
    assert registry.load(host).sites["shop"].history[-1].action == "restart"
    assert (root / "srv/sites/shop/current").readlink().as_posix() == f"releases/{R1}"


@pytest.mark.skipif(os.geteuid() != 0, reason="limits changes need root")
def test_limits_rewrite_the_slice_and_apply_to_the_running_site(root, shop):
    rules = [(["systemctl", "is-active", "--quiet", "siteops-shop.slice"], 0, ""),
             (["systemctl", "is-active"], 3, ""),
             (["systemctl", "list-units"], 0, "siteops-shop.slice loaded active active\n")
             ] + CHANGES
    host, runner = make_host(root, rules, dry_run=False)
    systemd.ensure_units(host, shop)  # as add-site left them
    host.actions.clear()
    assert limits.main(["shop", "--memory-max", "512M", "--tasks-max", "128"], host) == 0
    assert planned_commands(host) == [
        "systemctl daemon-reload",
        "systemctl set-property --runtime siteops-shop.slice MemoryMax=512M TasksMax=128 "
        "CPUWeight=100 IOWeight=100",
    ]
    text = (root / "etc/systemd/system/siteops-shop.slice").read_text()
    assert "MemoryMax=512M\n" in text and "TasksMax=128\n" in text
    assert registry.load(host).sites["shop"].limits.set() == {"memory_max": "512M",
                                                              "tasks_max": 128}
    with pytest.raises(SystemExit) as bad:
        limits.main(["shop", "--memory-max", "1T"], host)
    assert bad.value.code == 2


def test_recovery_moves_traffic_back_before_it_removes_the_interrupted_release(root, shop):
    """A deploy killed after its switch reached nginx and `current` but before
    the registry recorded it: the registry decides (R1 stays live), and the
    release's files go only after nginx and `current` have left it."""
    path = root / "var/lib/siteops/registry.json"
    doc = json.loads(path.read_text())
    doc["sites"]["shop"]["releases"][R2]["result"] = "building"
    path.write_text(json.dumps(doc))
    site = registry.load(make_host(root)[0]).sites["shop"]
    interrupted = site.copy(live=model.Live(R2, 1))
    host, runner = prepared_host(root, interrupted, [
        (["systemctl", "list-units"], 0, "shop-frontend@3101.service loaded active running x\n"),
        (["systemctl", "show"], 0, "ActiveState=active\nNRestarts=0\n"),
        (["systemctl", "is-enabled"], 0, ""), (["systemctl", "is-active"], 0, ""),
        (["nginx", "-v"], 0, "", "nginx version: nginx/1.22.1"), *CHANGES])
    (root / "srv/sites/shop/current").unlink()
    (root / "srv/sites/shop/current").symlink_to(f"releases/{R2}")
    assert "127.0.0.1:3101" in (root / "etc/nginx/sites-available/shop.conf").read_text()
    recovered = instances.recover(host, site)
    steps = [str(a) for a in host.actions]
    nginx_back = next(i for i, a in enumerate(steps) if "sites-available/shop.conf" in a)
    current_back = next(i for i, a in enumerate(steps) if "current -> releases/" + R1 in a)
    stopped = next(i for i, a in enumerate(steps) if "stop shop-frontend@3101.service" in a)
    removed = next(i for i, a in enumerate(steps) if "rm -rf" in a and R2 in a)
    assert nginx_back < removed and current_back < removed and stopped < removed
    assert "127.0.0.1:3100" in (root / "etc/nginx/sites-available/shop.conf").read_text()
    assert (root / "srv/sites/shop/current").readlink().as_posix() == f"releases/{R1}"
    assert recovered.releases[R2].result == "failed" and recovered.live.release == R1
    assert "systemctl --no-reload disable --quiet shop-frontend@3101.service" in \
        planned_commands(host)


def test_a_reload_left_pending_by_a_killed_run_is_done_by_the_next(root, shop):
    host, _ = prepared_host(root, shop, healthy())  # wrote the site file and reloaded
    marker = root / "var/lib/siteops/nginx-reload-pending"
    assert not marker.exists()
    nginx.ensure_site(host, shop)
    assert planned_commands(host) == []  # unchanged, nothing due
    nginx.mark_reload_pending(host)  # as a run killed before its reload leaves it
    nginx.ensure_site(host, shop)
    assert planned_commands(host) == ["nginx -t -q", "systemctl reload-or-restart nginx"]
    assert not marker.exists()


@pytest.mark.parametrize("need, plan", [
    ("no", "systemctl --no-reload enable --now shop-redis.service"),
    ("yes", "systemctl enable --now shop-redis.service")])  # files written, then stopped
def test_a_unit_is_started_without_reloading_every_unit_unless_its_files_changed(root, need, plan):
    host, _ = make_host(root, [(["systemctl", "is-enabled"], 1, ""),
                               (["systemctl", "show"], 0, f"NeedDaemonReload={need}\n"),
                               (["systemctl", "is-active"], 3, "")])
    systemd.ensure_started(host, "shop-redis.service")
    assert planned_commands(host) == [plan]


def test_keep_warm_leaves_the_old_instances_running_and_a_switch_back_reuses_them(root, shop):
    group = "/siteops.slice/siteops-shop.slice/shop-frontend@3100.service"
    host, _ = prepared_host(root, shop, [(["systemctl", "show", "-p", "ControlGroup"], 0,
                                          group + "\n")] + healthy())
    (root / "sys/fs/cgroup" / group.lstrip("/")).mkdir(parents=True)
    (root / "sys/fs/cgroup" / group.lstrip("/") / "memory.current").write_text("50331648\n")
    instances.ensure_dropins(host, shop, R1, shop.releases[R1], 0)  # R1's, as its deploy left them
    host.actions.clear()
    site = instances.switch(host, shop, R2, shop.releases[R2], lambda e: None, keep_warm=True)
    assert planned_commands(host) == [
        "systemctl start shop-frontend@3101.service",
        "systemctl reload-or-restart nginx",
        "systemctl --no-reload enable --quiet shop-frontend@3101.service",
        "systemctl --no-reload disable --quiet shop-frontend@3100.service",  # not at boot
    ]  # 3100 neither drained nor stopped
    assert registry.load(host).sites["shop"].warm == site.warm == model.Live(R1, 0)
    assert f"kept warm for a rollback to {R1}: shop-frontend@3100.service (48.0 MB)" in \
        host.out.getvalue()
    # Kept on disk while it runs, even when no rollback would go there.
    site.releases[R1].rolled_back = True
    assert releases.rollback_target(site) is None and releases.to_prune(site, 1) == []
    site.releases[R1].rolled_back = False
    # Back to R1: its instance, listening on 3100, is checked and used as it
    # runs (the drop-in unchanged: no daemon-reload; start is a no-op on it).
    host, runner = prepared_host(root, site, [
        (["ss", "-H", "-t", "-l", "-n"], 0, "LISTEN 0 511 127.0.0.1:3100 0.0.0.0:*\n"
                                            "LISTEN 0 511 127.0.0.1:3101 0.0.0.0:*\n"),
        held_by(3100, 3100), *healthy()[2:]])
    back = instances.switch(host, site, R1, site.releases[R1], lambda e: None)
    assert planned_commands(host) == [
        "systemctl start shop-frontend@3100.service",
        "systemctl reload-or-restart nginx",
        "systemctl --no-reload enable --quiet shop-frontend@3100.service",
        "systemctl --no-reload disable --quiet shop-frontend@3101.service",
        "systemctl stop --no-block shop-frontend@3101.service",
    ]
    assert any(c[0] == "curl" and c[-1] == "http://127.0.0.1:3100/healthz" for c in runner.calls)
    assert back.live == model.Live(R1, 0) and back.warm is None
    assert registry.load(host).sites["shop"].warm is None


def test_a_switch_elsewhere_stops_the_warm_instances_first_and_recover_spares_them(root, shop):
    warm = shop.copy(live=model.Live(R2, 1), warm=model.Live(R1, 0))
    registry_path = root / "var/lib/siteops/registry.json"
    doc = json.loads(registry_path.read_text())
    doc["sites"]["shop"].update(live={"release": R2, "offset": 1},
                                warm={"release": R1, "offset": 0})
    registry_path.write_text(json.dumps(doc))
    host, _ = prepared_host(root, warm, [
        (["systemctl", "list-units"], 0, "shop-frontend@3100.service loaded active running x\n"
                                         "shop-frontend@3101.service loaded active running x\n"),
        (["systemctl", "show"], 0, "ActiveState=active\nNRestarts=0\n"),
        (["systemctl", "is-enabled"], 0, ""), (["systemctl", "is-active"], 0, ""),
        (["nginx", "-v"], 0, "", "nginx version: nginx/1.22.1"), *CHANGES])
    assert instances.recover(host, warm).warm == model.Live(R1, 0)
    # The warm instance is no stray: not stopped; only not started at boot
    # (still enabled here, as a switch killed before its disable leaves it).
    assert planned_commands(host) == ["systemctl --no-reload disable --quiet "
                                      "shop-frontend@3100.service"]
    # The same release on fresh instances (config, outdated --restart): the
    # warm ones would run the old environment; they stop before anything starts.
    host, _ = prepared_host(root, warm, [(["ss", "-H", "-t", "-l", "-n"], 0, "LISTEN 0 511 "
                                          "127.0.0.1:3101 0.0.0.0:*\n"), held_by(3100, 3100),
                                         (["systemctl", "list-units"], 0,  # once warm: loaded
                                          "shop-frontend@3100.service loaded inactive dead\n"),
                                         *healthy()[2:]])
    site = instances.switch(host, warm, R2, warm.releases[R2], lambda e: None)
    plan = planned_commands(host)
    assert plan[:3] == ["systemctl stop shop-frontend@3100.service", "systemctl daemon-reload",
                        "systemctl start shop-frontend@3100.service"]
    assert site.live == model.Live(R2, 0) and site.warm is None


def test_memory_of_units_from_their_cgroup_or_their_processes(root):
    groups = ["/siteops.slice/siteops-shop.slice/shop-frontend@3100.service",
              "/siteops.slice/siteops-shop.slice/shop-api@4000.service"]
    host, runner = make_host(root, [(["systemctl", "show", "-p", "ControlGroup"], 0,
                                     "\n".join(groups) + "\n")])
    front = root / "sys/fs/cgroup" / groups[0].lstrip("/")
    api = root / "sys/fs/cgroup/unified" / groups[1].lstrip("/")  # cgroup v1 (hybrid)
    front.mkdir(parents=True)
    (front / "memory.current").write_text("1048576\n")
    api.mkdir(parents=True)  # no memory.current: its processes' resident memory
    (api / "cgroup.procs").write_text("41\n42\n")
    for pid, kb in ((41, 1024), (42, 2048)):
        (root / f"proc/{pid}").mkdir(parents=True)
        (root / f"proc/{pid}/status").write_text(f"Name:\tnode\nVmRSS:\t    {kb} kB\nThreads:\t7\n")
    units = ["shop-frontend@3100.service", "shop-api@4000.service"]
    assert instances.memory_mb(host, units) == "4.0"
    assert runner.calls == [["systemctl", "show", "-p", "ControlGroup", "--value", "--", *units]]
    host, _ = make_host(root, [(["systemctl", "show"], 0, "\n")])  # not running: no group
    assert instances.memory_mb(host, ["shop-frontend@3101.service"]) == "?"


def test_a_build_unit_left_loaded_is_stopped_and_reset_before_the_next_step(root):
    host, runner = make_host(root, [(["systemctl", "show"], 0, "loaded\n"),
                                    (["systemctl", "reset-failed"], 1, "", "not failed"),
                                    *CHANGES], dry_run=False)
    systemd.wait_unloaded(host, "siteops-build-shop.service", timeout=0)
    assert planned_commands(host) == ["systemctl stop siteops-build-shop.service",
                                      "systemctl reset-failed siteops-build-shop.service"]
    host, _ = make_host(root, [(["systemctl", "show"], 0, "not-found\n")], dry_run=False)
    systemd.wait_unloaded(host, "siteops-build-shop.service", timeout=0)
    assert planned_commands(host) == []


def test_sleeping_turned_off_again_stops_the_doors_a_stopped_run_left(root, shop):
    """A limits --sleep-after never stopped after its switch committed (the
    registry: always on) but before the old doors stopped: the run again has
    nothing to switch, and stops them."""
    host, runner = prepared_host(root, shop, [
        (["systemctl", "list-units"], 0, "shop-frontend@3100.service loaded active running x\n"
                                         "shop-door@3101.socket loaded active listening x\n"
                                         "shop-door@3101.service loaded active running x\n"),
        (["systemctl", "is-enabled", "--quiet", "shop-door@3101.socket"], 0, ""),
        (["systemctl", "is-enabled"], 1, ""),
        (["systemctl", "show"], 0, "ActiveState=active\nSubState=running\n")] + healthy())
    site = sites_op.set_sleep(host, "shop", None)
    plan = planned_commands(host)
    assert site.live == model.Live(R1, 0) and site.sleep_after is None
    assert "systemctl stop shop-door@3101.socket" in plan, plan
    assert "systemctl stop shop-door@3101.service" in plan, plan
    assert "systemctl --no-reload disable --quiet shop-door@3101.socket" in plan, plan
    assert not any("shop-frontend@3100" in c for c in plan if "stop" in c), plan


def test_a_retired_worker_that_ended_failed_is_said_and_reset(tmp_path):
    """A worker exiting non-zero on SIGTERM (or killed at its stop timeout)
    is named in the deploy's output, and not left `failed`."""
    shown = ("ActiveState=failed\nResult=exit-code\n\n"
             "ActiveState=inactive\nResult=success\n")
    host, runner = make_host(tmp_path, [(["systemctl", "show"], 0, shown), (["systemctl"],)],
                             dry_run=False)
    instances.forget_failed(host, "shop", ["shop-worker@q-1-0.service", "shop-worker@q-2-0.service"])
    assert ["systemctl", "reset-failed", "shop-worker@q-1-0.service"] in runner.calls
    assert "shop-worker@q-1-0.service ended exit-code when it was stopped" in host.out.getvalue()
    assert not any("q-2-0" in " ".join(c) for c in runner.calls if "reset-failed" in c)


@pytest.mark.skipif(os.geteuid() != 0, reason="unit files are written as root")
def test_units_are_verified_in_a_candidate_directory_before_any_is_written(root):
    """systemd.write_units: the verify sees the new files, the drop-ins beside
    them and the distribution's units, not the rest of /etc/systemd/system
    (whose size made it slow); a failing verify writes nothing."""
    seen = {"code": 0}

    def runner(argv, input=None, timeout=None, env=None, stream=None):
        if argv[:2] == ["systemd-analyze", "verify"]:
            seen["path"] = env["SYSTEMD_UNIT_PATH"].split(":")
            staged = siteops_host.Path(seen["path"][0])
            seen["files"] = sorted(str(p.relative_to(staged)) for p in staged.rglob("*")
                                   if p.is_file())
            seen["argv"] = [a.replace(str(staged), "CANDIDATE") for a in argv[3:]]
            return siteops_host.Result(argv, seen["code"], "", "shop-redis.service: Command "
                                       "/nope is not executable: No such file or directory\n")
        assert argv[:2] == ["systemctl", "list-units"], argv
        return siteops_host.Result(argv, 0, "")
    host = siteops_host.Host(runner=runner, paths=siteops_host.Paths(root))
    units_dir = root / "etc/systemd/system"
    (units_dir / "shop-frontend@3100.service.d").mkdir(parents=True)
    (units_dir / "shop-frontend@3100.service.d/admin.conf").write_text("[Service]\nNice=5\n")
    (units_dir / "blog-redis.service").write_text("[Service]\nExecStart=/bin/true\n")
    files = {units_dir / "shop-frontend@.service": "[Service]\nExecStart=/bin/true\n",
             units_dir / "shop-redis.service": "[Service]\nExecStart=/bin/true\n"}
    assert systemd.write_units(host, files, ["shop-frontend@3100.service", "shop-redis.service"],
                               "units of shop") == list(files)
    assert seen["path"][1:] == list(systemd.VENDOR_UNITS)
    assert seen["files"] == ["shop-frontend@.service", "shop-frontend@3100.service.d/admin.conf",
                             "shop-redis.service"]  # not blog's
    assert seen["argv"] == ["shop-frontend@3100.service", "CANDIDATE/shop-redis.service"]
    assert not siteops_host.Path(seen["path"][0]).exists()  # the candidate is gone
    assert (units_dir / "shop-redis.service").read_text() == files[units_dir / "shop-redis.service"]
    seen["code"], seen["files"] = 1, None
    bad = {units_dir / "shop-redis.service": "[Service]\nExecStart=/nope\n"}
    with pytest.raises(SiteopsError, match="units of shop: `systemd-analyze verify` failed, "
                                           "nothing written: shop-redis.service: Command /nope"):
        systemd.write_units(host, bad, ["shop-redis.service"], "units of shop")
    assert (units_dir / "shop-redis.service").read_text() == "[Service]\nExecStart=/bin/true\n"
    seen["files"] = None
    assert systemd.write_units(host, files, ["shop-redis.service"], "units of shop") == []
    assert seen["files"] is None  # unchanged files: no verify


def test_a_deliberate_restart_refused_by_the_start_rate_limit_is_reset_and_run_again(root):
    calls = {"restart": 0}

    def runner(argv, input=None, timeout=None, env=None, stream=None):
        if argv[:2] == ["systemctl", "restart"]:
            calls["restart"] += 1
            return siteops_host.Result(argv, 1 if calls["restart"] == 1 else 0, "",
                                       "Start request repeated too quickly.")
        if argv[:2] == ["systemctl", "show"]:
            return siteops_host.Result(argv, 0, "Result=start-limit-hit\n")
        return siteops_host.Result(argv, 0, "")
    host = siteops_host.Host(runner=runner, paths=siteops_host.Paths(root))
    systemd.deliberately(host, "restart", ["rsyslog"])
    assert [" ".join(a.argv) for a in host.actions] == [
        "systemctl restart rsyslog", "systemctl reset-failed rsyslog", "systemctl restart rsyslog"]
    # Any other failure is not hidden.
    host = siteops_host.Host(runner=lambda argv, **kw: siteops_host.Result(
        argv, 1 if argv[1] == "restart" else 0, "Result=exit-code\n" if argv[1] == "show"
        else "", "failed"), paths=siteops_host.Paths(root))
    with pytest.raises(siteops_host.CommandError):
        systemd.deliberately(host, "restart", ["rsyslog"])
