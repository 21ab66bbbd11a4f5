"""deploy and rollback on real booted Debian 12 and 13 machines: git repositories
made in the box, real builds in the systemd sandbox, real health checks, nginx
switches measured with a steady load of requests."""

import json
import re
import time

import pytest

from machine import SRC, Load, commit, settled, states

NODE_REPO, PY_REPO = "/srv/repos/nodeapp", "/srv/repos/pyapp"

NODE_FILES = {
    "package.json": '{"name": "nodeapp", "version": "1.0.0", '
                    '"scripts": {"build": "node build.js", "start": "node server.js"}}\n',
    "build.js": """\
const fs = require("fs");
const version = fs.readFileSync("VERSION", "utf8").trim();
console.log("building " + version);
if (version.includes("badbuild")) { console.error("syntax error in app.ts line 7"); process.exit(3); }
const slow = /slow(\\d+)/.exec(version);
if (slow) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, Number(slow[1]) * 1000); }
fs.writeFileSync("built.txt", "built " + version);
""",
    "server.js": """\
const http = require("http");
const fs = require("fs");
const version = fs.readFileSync("VERSION", "utf8").trim();
if (version.includes("crash")) { console.error("cannot connect to the database"); process.exit(4); }
const built = fs.readFileSync("built.txt", "utf8");
http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.statusCode = version.includes("unhealthy") ? 500 : 200;
    return res.end("health\\n");
  }
  res.end(`nodeapp ${version} ${process.env.PORT} ${process.env.SITEOPS_RELEASE} ${built}\\n`);
}).listen(Number(process.env.PORT), process.env.HOST);
process.on("SIGTERM", () => process.exit(0));
""",
    "siteops.toml": 'health_timeout = 5\n\n[frontend]\nstart = "node server.js"\nhealth = "/healthz"\n',
}

PY_FILES = {
    "requirements.txt": "",
    "app.py": """\
import http.server, os, sys

component = sys.argv[1]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"pyapp {component} {os.environ['PORT']} {sys.prefix} api={os.environ['API_PORT']}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
""",
    "siteops.toml": """\
runtime = "python"

[frontend]
start = "python app.py frontend"
health = "/"

[api]
start = "python app.py api"
health = "/api/health"
""",
}


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops("add-site nodeapp --domain nodeapp.test --components frontend")
    box.siteops("add-site pyapp --domain pyapp.test")
    commit(box, NODE_REPO, dict(NODE_FILES, VERSION="v1\n"), "v1")
    commit(box, PY_REPO, PY_FILES, "py v1")
    return box


def curl(box, host_header: str, path: str = "/") -> str:
    return box.sh(f"curl -sS -H 'Host: {host_header}' http://127.0.0.1{path}").stdout


def registry(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/registry.json").stdout)


def deploy(box, args: str, check: bool = True):
    return box.siteops(f"deploy {args}", check=check)


def version(box, v: str) -> str:
    return commit(box, NODE_REPO, {"VERSION": v + "\n"}, v)


def live_release(box, site="nodeapp") -> str:
    return registry(box)["sites"][site]["live"]["release"]


def releases_on_disk(box, site="nodeapp") -> list[str]:
    return box.sh(f"ls /srv/sites/{site}/releases").stdout.split()


def test_first_deploy_serves_the_built_node_app(host):
    out = deploy(host, f"nodeapp --repo {NODE_REPO}").stdout
    rid = live_release(host)
    assert curl(host, "nodeapp.test") == f"nodeapp v1 3100 {rid} built v1\n"
    assert "==> install: pnpm install --prod=false" in out
    assert "==> build: pnpm run build" in out and "    building v1" in out  # streamed
    site = registry(host)["sites"]["nodeapp"]
    head = host.sh(f"git -C {NODE_REPO} rev-parse HEAD").stdout.strip()
    assert site["repo"] == NODE_REPO and site["releases"][rid]["commit"] == head
    assert site["releases"][rid]["result"] == "ok" and site["history"][-1]["action"] == "deploy"
    assert host.sh("readlink /srv/sites/nodeapp/current").stdout.strip() == f"releases/{rid}"
    # Built by the site user, not root; the service runs as the site user too.
    assert host.sh(f"stat -c %U /srv/sites/nodeapp/releases/{rid}/built.txt").stdout.strip() == "nodeapp"
    assert host.sh("ps -o user= -C node").stdout.split() == ["nodeapp"]
    assert host.sh(f"readlink /srv/sites/nodeapp/releases/{rid}/.env").stdout.strip() == "../../shared/.env"


def test_units_stay_hardened(host):
    out = host.sh("systemd-analyze security nodeapp-frontend@3100.service").stdout
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
    assert score <= 1.5


def test_python_app_runs_from_its_venv_with_its_api(host):
    deploy(host, f"pyapp --repo {PY_REPO}")
    rid = live_release(host, "pyapp")
    venv = f"/srv/sites/pyapp/releases/{rid}/.venv"
    assert curl(host, "pyapp.test") == f"pyapp frontend 3110 {venv} api=4010\n"
    assert curl(host, "pyapp.test", "/api/x") == f"pyapp api 4010 {venv} api=4010\n"


def test_second_deploy_switches_without_dropping_a_request(host):
    old = live_release(host)
    version(host, "v2")
    load = Load(host, "nodeapp.test")
    deploy(host, "nodeapp")
    time.sleep(1)
    samples = load.stop()
    new = live_release(host)
    failed = [s for s in samples if s[2] != 200]
    assert len(samples) > 100 and failed == [], failed[:5]
    bodies = {s[3].split()[1] for s in samples}
    assert bodies == {"v1", "v2"}  # served by both, nothing else
    assert curl(host, "nodeapp.test") == f"nodeapp v2 3101 {new} built v2\n"
    assert states(host, "nodeapp-frontend@3100") == ["inactive"]
    assert host.sh("systemctl is-enabled nodeapp-frontend@3100 nodeapp-frontend@3101",
                   check=False).stdout.split() == ["disabled", "enabled"]
    assert releases_on_disk(host) == sorted([old, new])


@pytest.mark.parametrize("breakage, message, app_line", [
    ("badbuild", "build failed (exit 3): pnpm run build", "syntax error in app.ts line 7"),
    ("crash", "nodeapp-frontend@3100.service exited", "cannot connect to the database"),
    ("unhealthy", "did not pass its health check GET /healthz on port 3100 within 5s", None),
])
def test_a_failed_deploy_leaves_the_live_release_serving(host, breakage, message, app_line):
    live, disk = live_release(host), releases_on_disk(host)
    nginx_before = host.sh("md5sum /etc/nginx/sites-available/nodeapp.conf").stdout
    version(host, f"v2-{breakage}")
    res = deploy(host, "nodeapp", check=False)
    assert res.returncode == 1 and message in res.stderr, res.stderr
    if app_line:
        assert app_line in res.stderr  # the app's own last lines are shown
    assert curl(host, "nodeapp.test").startswith(f"nodeapp v2 3101 {live} ")
    assert host.sh("readlink /srv/sites/nodeapp/current").stdout.strip() == f"releases/{live}"
    assert host.sh("md5sum /etc/nginx/sites-available/nodeapp.conf").stdout == nginx_before
    assert releases_on_disk(host) == disk  # the failed release was cleaned
    assert host.sh("systemctl is-active nodeapp-frontend@3100", check=False).stdout.strip() != "active"
    site = registry(host)["sites"]["nodeapp"]
    failed = site["releases"][max(site["releases"])]
    assert failed["result"] == "failed" and message.split()[0] in failed["error"]
    assert site["history"][-1]["result"] == "failed"


def test_rollback_goes_back_one_release_at_a_time(host):
    v1, v2 = releases_on_disk(host)
    version(host, "v3")
    deploy(host, "nodeapp")
    v3 = live_release(host)
    listing = host.siteops("rollback nodeapp --list").stdout
    assert re.search(rf"^\* {v3} .* ok ", listing, re.M)
    assert re.search(rf"^< {v2} ", listing, re.M)

    host.siteops("rollback nodeapp")
    assert curl(host, "nodeapp.test").startswith("nodeapp v2 ") and live_release(host) == v2
    host.siteops("rollback nodeapp")  # two in a row: two releases back, not back to v3
    assert curl(host, "nodeapp.test").startswith("nodeapp v1 ") and live_release(host) == v1
    res = host.siteops("rollback nodeapp", check=False)
    assert res.returncode == 1 and "no earlier good release" in res.stderr
    host.siteops(f"rollback nodeapp --to {v3}")
    assert curl(host, "nodeapp.test").startswith("nodeapp v3 ") and live_release(host) == v3
    events = [(e["action"], e["release"]) for e in registry(host)["sites"]["nodeapp"]["history"]]
    assert events[-3:] == [("rollback", v2), ("rollback", v1), ("rollback", v3)]
    res = host.siteops("rollback nodeapp --to 20200101T000000Z", check=False)
    assert res.returncode == 2 and "no release 20200101T000000Z" in res.stderr


def test_pruning_keeps_five_and_never_the_live_one_or_the_rollback_target(host):
    for v in ("v4", "v5", "v6"):
        version(host, v)
        deploy(host, "nodeapp")
    on_disk = releases_on_disk(host)
    assert len(on_disk) == 5 and live_release(host) == on_disk[-1]  # v1 went, v2..v6 stay
    # Roll back from v6 to v5, then deploy v7 keeping 2: v7 (live), v6 (newest)
    # and v5, the rollback target (v6 was rolled back from), stay.
    host.siteops("rollback nodeapp")
    v5 = live_release(host)
    version(host, "v7")
    deploy(host, "nodeapp --keep 2")
    v7 = live_release(host)
    assert releases_on_disk(host) == sorted([v5, on_disk[-1], v7])
    assert set(registry(host)["sites"]["nodeapp"]["releases"]) == {v5, on_disk[-1], v7}


def test_keep_warm_rolls_back_onto_running_instances_with_no_failed_request(host):
    """deploy --keep-warm: the replaced release keeps running out of nginx; the
    rollback, under load, health-checks that same process and switches nginx
    to it; a switch anywhere else stops it first."""
    v7, offset = (registry(host)["sites"]["nodeapp"]["live"][k] for k in ("release", "offset"))
    warm_unit = f"nodeapp-frontend@{3100 + offset}.service"
    version(host, "v8")
    load = Load(host, "nodeapp.test")
    out = deploy(host, "nodeapp --keep-warm").stdout
    v8 = live_release(host)
    new_unit = f"nodeapp-frontend@{3100 + 1 - offset}.service"
    assert re.search(rf"kept warm for a rollback to {v7}: {warm_unit} \([\d.]+ MB\)", out), out
    assert registry(host)["sites"]["nodeapp"]["warm"] == {"release": v7, "offset": offset}
    assert curl(host, "nodeapp.test").startswith("nodeapp v8 ")
    assert states(host, warm_unit, new_unit) == ["active", "active"]
    assert host.sh(f"systemctl is-enabled {warm_unit}", check=False).stdout.strip() == "disabled"
    assert f"127.0.0.1:{3100 + offset}" not in host.sh(
        "cat /etc/nginx/sites-available/nodeapp.conf").stdout
    settled(host, "nodeapp")  # audit has nothing against it
    pid = host.sh(f"systemctl show -p MainPID --value {warm_unit}").stdout.strip()
    t0 = time.monotonic()
    out = host.siteops("rollback nodeapp").stdout
    seconds = time.monotonic() - t0
    time.sleep(0.5)
    samples = load.stop()
    failed = [s for s in samples if s[2] != 200]
    assert len(samples) > 100 and failed == [], failed[:5]
    assert f"warm release {v7}" in out, out
    assert host.sh(f"systemctl show -p MainPID --value {warm_unit}").stdout.strip() == pid
    assert live_release(host) == v7 and curl(host, "nodeapp.test").startswith("nodeapp v7 ")
    assert registry(host)["sites"]["nodeapp"]["warm"] is None
    assert states(host, warm_unit, new_unit) == ["active", "inactive"]
    print(f"rollback onto warm instances: {seconds:.2f} s (command start to exit, "
          f"{len(samples)} requests, 0 failed)")
    # Kept warm again, then a deploy without the flag: the warm one stops first.
    host.siteops(f"rollback nodeapp --to {v8} --keep-warm")
    assert registry(host)["sites"]["nodeapp"]["warm"] == {"release": v7, "offset": offset}
    version(host, "v9")
    out = deploy(host, "nodeapp").stdout
    assert f"stop the warm instances {warm_unit}" in out, out
    assert registry(host)["sites"]["nodeapp"]["warm"] is None
    assert curl(host, "nodeapp.test").startswith("nodeapp v9 ")
    assert states(host, warm_unit, new_unit) == ["active", "inactive"]  # v9 at v7's old port
    settled(host, "nodeapp")


def run_in_background(box, command: str, name: str) -> None:
    box.sh(f"setsid bash -c '{SRC}/bin/{command} >/tmp/{name}.log 2>&1; echo $? >/tmp/{name}.rc' "
           "</dev/null >/dev/null 2>&1 &")


def wait_for(box, condition: str, timeout: float = 30) -> None:
    box.sh(f"for i in $(seq {int(timeout * 10)}); do {condition} && exit 0; sleep 0.1; done; exit 1")


def test_a_second_deploy_of_the_same_site_is_refused_while_others_deploy(host):
    version(host, "v8-slow4")
    run_in_background(host, "deploy nodeapp", "first")
    wait_for(host, "systemctl is-active --quiet siteops-build-nodeapp.service")
    res = deploy(host, "nodeapp", check=False)
    assert res.returncode == 1
    assert re.search(r"site nodeapp is locked by another siteops command \(pid \d+, root, "
                     r"since \S+: deploy nodeapp\)", res.stderr), res.stderr
    deploy(host, "pyapp")  # another site deploys freely meanwhile
    wait_for(host, "test -s /tmp/first.rc", 60)
    assert host.sh("cat /tmp/first.rc").stdout.strip() == "0", host.sh("cat /tmp/first.log").stdout
    assert curl(host, "nodeapp.test").startswith("nodeapp v8-slow4 ")


def test_kill_9_mid_build_then_the_next_deploy_succeeds(host):
    live = live_release(host)
    version(host, "v9-slow60")
    run_in_background(host, "deploy nodeapp", "killed")
    wait_for(host, "systemctl is-active --quiet siteops-build-nodeapp.service")
    host.sh("pkill -9 -f 'bin/deploy nodeapp'")
    assert curl(host, "nodeapp.test").startswith("nodeapp v8-slow4 ")
    half = [r for r, rec in registry(host)["sites"]["nodeapp"]["releases"].items()
            if rec["result"] == "building"]
    assert len(half) == 1
    version(host, "v10")
    out = deploy(host, "nodeapp").stdout
    assert f"remove interrupted release {half[0]}" in out
    assert curl(host, "nodeapp.test").startswith("nodeapp v10 ")
    site = registry(host)["sites"]["nodeapp"]
    assert half[0] not in releases_on_disk(host) and live in releases_on_disk(host)
    assert not [r for r in site["releases"].values() if r["result"] == "building"]
    assert host.sh("systemctl is-active siteops-build-nodeapp.service",
                   check=False).stdout.strip() != "active"
    active = host.sh("systemctl list-units --state=active --plain --no-legend "
                     "'nodeapp-frontend@*'").stdout.split("\n")
    assert len([l for l in active if l.strip()]) == 1
    # Nothing is left locked: a rollback takes the lock at once.
    host.siteops("rollback nodeapp")


def test_bad_input_is_refused_before_anything_changes(host):
    before = host.sh("md5sum /var/lib/siteops/registry.json").stdout
    for args, message in [
            ("nodeapp --repo '--upload-pack=touch /tmp/pwned'", "invalid repository"),
            ("nodeapp --repo 'ext::sh -c touch% /tmp/pwned'", "invalid repository"),
            ("nodeapp --ref=--output=/tmp/pwned", "invalid ref"),
            ("nodeapp --ref 'main..x'", "invalid ref"),
            ("nosuch", "no site 'nosuch'"),
            ("nodeapp --keep 1", "invalid --keep")]:
        res = deploy(host, args, check=False)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
    # A ref the repository lacks is a runtime error (exit 1), resolved before a
    # release is recorded: nothing changes either.
    res = deploy(host, "nodeapp --ref does-not-exist", check=False)
    assert res.returncode == 1 and "not a branch, tag or commit" in res.stderr
    assert host.sh("test -e /tmp/pwned", check=False).returncode == 1
    assert host.sh("md5sum /var/lib/siteops/registry.json").stdout == before


def test_dry_run_prints_the_plan_and_changes_nothing(host):
    before = host.sh("md5sum /var/lib/siteops/registry.json; ls /srv/sites/nodeapp/releases").stdout
    out = deploy(host, "nodeapp --dry-run").stdout
    assert "fetch /srv/repos/nodeapp" in out and "health check" in out
    assert host.sh("md5sum /var/lib/siteops/registry.json; ls /srv/sites/nodeapp/releases").stdout == before


def test_a_private_repository_is_fetched_with_the_sites_deploy_key(host):
    # A git account over SSH that only the site's deploy key may log in to.
    commit(host, PY_REPO, {"NOTE": "private\n"}, "private")
    host.sh("useradd -m -s /bin/sh gitsrv && install -d -m 700 -o gitsrv -g gitsrv /home/gitsrv/.ssh"
            f" && cp -r {PY_REPO}/.git /home/gitsrv/pyapp.git"
            " && git --git-dir=/home/gitsrv/pyapp.git config core.bare true"
            " && chown -R gitsrv: /home/gitsrv/pyapp.git"
            " && install -d -m 700 /etc/siteops/deploy-keys"
            " && ssh-keygen -q -t ed25519 -N '' -C pyapp-deploy -f /etc/siteops/deploy-keys/pyapp"
            " && install -m 600 -o gitsrv -g gitsrv /etc/siteops/deploy-keys/pyapp.pub"
            " /home/gitsrv/.ssh/authorized_keys")
    url = "gitsrv@127.0.0.1:/home/gitsrv/pyapp.git"
    deploy(host, f"pyapp --repo {url}")
    site = registry(host)["sites"]["pyapp"]
    assert site["repo"] == url
    head = host.sh(f"git -C {PY_REPO} rev-parse HEAD").stdout.strip()
    assert site["releases"][site["live"]["release"]]["commit"] == head
    # Without the key (root's own key is not authorized there) the fetch fails.
    host.sh("mv /etc/siteops/deploy-keys/pyapp /root/pyapp.key")
    try:
        res = deploy(host, "pyapp", check=False)
    finally:
        host.sh("mv /root/pyapp.key /etc/siteops/deploy-keys/pyapp")
    assert res.returncode == 1 and "Permission denied (publickey" in res.stderr, res.stderr
    assert curl(host, "pyapp.test").startswith("pyapp frontend ")


def test_a_static_site_serves_its_directory_and_nothing_else(host):
    host.siteops("add-site web --domain web.test --components frontend")
    commit(host, "/srv/repos/web", {"public/index.html": "<h1>web v1</h1>\n",
                                    "notes.txt": "not for the public\n",
                                    "siteops.toml": 'runtime = "static"\n'}, "web")
    deploy(host, "web --repo /srv/repos/web")
    assert curl(host, "web.test") == "<h1>web v1</h1>\n"
    for path in ("/.env", "/notes.txt", "/../.env"):
        code = host.sh(f"curl -s -o /dev/null -w '%{{http_code}}' -H 'Host: web.test' "
                       f"--path-as-is http://127.0.0.1{path}").stdout
        assert code in ("400", "404"), (path, code)


def test_without_pnpm_node_apps_install_with_npm(host):
    host.sh("mv /usr/local/bin/pnpm /usr/local/bin/pnpm.off")
    try:
        version(host, "v11")
        out = deploy(host, "nodeapp").stdout
    finally:
        host.sh("mv /usr/local/bin/pnpm.off /usr/local/bin/pnpm")
    assert "==> install: npm install --include=dev --no-audit --no-fund" in out
    assert "==> build: npm run build" in out and "    building v11" in out
    assert curl(host, "nodeapp.test").startswith("nodeapp v11 ")


def test_changed_unit_files_move_the_live_release_without_dropping_a_request(host):
    live, before = live_release(host), registry(host)["sites"]["nodeapp"]["live"]["offset"]
    host.sh("sed -i 's/^RestartSec=2s/RestartSec=3s/' /etc/systemd/system/nodeapp-frontend@.service")
    load = Load(host, "nodeapp.test")
    out = host.siteops("add-site nodeapp --domain nodeapp.test").stdout
    time.sleep(1)
    samples = load.stop()
    assert "moving release" in out
    assert [s for s in samples if s[2] != 200] == [] and len(samples) > 50
    site = registry(host)["sites"]["nodeapp"]
    assert site["live"] == {"release": live, "offset": 1 - before}
    assert site["history"][-1]["action"] == "restart"
    assert "RestartSec=2s" in host.sh("systemctl cat nodeapp-frontend@.service").stdout
    port = 3100 + site["live"]["offset"]
    assert curl(host, "nodeapp.test").startswith(f"nodeapp v11 {port} {live} ")


def test_refs_can_be_a_tag_or_a_commit(host):
    tagged = version(host, "v12")
    host.sh(f"git -C {NODE_REPO} tag release-12 {tagged}")
    version(host, "v13")  # the branch moves on; the tag and the commit do not
    deploy(host, "nodeapp --ref release-12")
    site = registry(host)["sites"]["nodeapp"]
    assert site["releases"][site["live"]["release"]]["commit"] == tagged
    assert curl(host, "nodeapp.test").startswith("nodeapp v12 ")
    deploy(host, f"nodeapp --ref {tagged[:10]}")
    assert curl(host, "nodeapp.test").startswith("nodeapp v12 ")
    deploy(host, "nodeapp --ref main")
    assert curl(host, "nodeapp.test").startswith("nodeapp v13 ")


def test_an_operators_strict_umask_changes_nothing_siteops_creates(host):
    # With the caller's umask 077 a static release would unpack 0600 and nginx
    # could not read it; siteops sets its own umask.
    commit(host, "/srv/repos/web", {"public/index.html": "<h1>web v2</h1>\n"}, "web v2")
    host.sh(f"umask 077 && {SRC}/bin/deploy web")
    assert curl(host, "web.test") == "<h1>web v2</h1>\n"
    version(host, "v14")
    host.sh(f"umask 077 && {SRC}/bin/deploy nodeapp")
    assert curl(host, "nodeapp.test").startswith("nodeapp v14 ")


def test_a_site_past_the_reference_ninety_takes_the_second_port_range_and_serves(host):
    """With slots 0-89 owned, the next site gets slot 90: ports 10000.. of the
    second range, bound by its units (SocketBindAllow), fenced by nftables,
    and served through nginx like any other."""
    data = registry(host)
    taken = {s["slot"] for s in data["sites"].values()}
    fillers = {f"filler{k}": {"name": f"filler{k}", "slot": k, "state": "ready",
                              "domains": [f"filler{k}.test"], "components": ["frontend"],
                              "ports": {"frontend": 3100 + 10 * k, "redis": 5000 + 10 * k},
                              "created": "2026-12-07T00:00:00Z"}
               for k in range(90) if k not in taken}
    # Entries only (no user, nothing runs): they hold their slots in the registry.
    original = json.dumps(data)
    data["sites"].update(fillers)
    host.sh("cat > /var/lib/siteops/registry.json", input=json.dumps(data))
    try:
        host.siteops("add-site far --domain far.test --components frontend")
        far = registry(host)["sites"]["far"]
        assert far["slot"] == 90 and far["ports"] == {"frontend": 10000, "redis": 10020}, far
        deploy(host, f"far --repo {NODE_REPO}")
        rid = live_release(host, "far")
        page = curl(host, "far.test")
        served = re.fullmatch(rf"nodeapp v\d+ (1000[0-9]) {rid} built v\d+\n", page)
        assert served, page
        unit = host.sh("cat /etc/systemd/system/far-frontend@.service").stdout
        assert "SocketBindAllow=tcp:10000-10009" in unit and "SocketBindAllow=tcp:10020-10029" \
            in unit, unit
        assert host.sh(f"systemctl is-active far-frontend@{served.group(1)}.service"
                       ).stdout.strip() == "active"
        # Its three blocks, owned by its uid in the loaded rules.
        rules = host.sh("nft list table inet siteops").stdout
        uid = host.sh("id -u far").stdout.strip()
        for block in ("10000-10009", "10010-10019", "10020-10029"):
            assert f'{uid} . {block} comment "siteops site far"' in rules, rules
        assert host.sh("ss -Hltn 'sport = :10020'").stdout.strip(), "far's Redis listens"
    finally:
        host.siteops("remove-site far --yes --no-backup", check=False)
        now = registry(host)
        for name in fillers:
            now["sites"].pop(name, None)
        host.sh("cat > /var/lib/siteops/registry.json", input=json.dumps(now))
    assert set(registry(host)["sites"]) == set(json.loads(original)["sites"])
