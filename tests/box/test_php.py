"""PHP sites on a real booted Debian machine: a PHP app of the tests' own
(PDO pgsql, phpredis, composer's autoloader, a static asset) deployed with
its own PHP-FPM on its port, served by nginx over FastCGI; redeployed and
rolled back under load with no failed request, the very next request
running the new code; its ini settings applied; its files and port closed
to a neighbour."""

import html
import json
import re
import shlex
import time

import pytest

from machine import (Load, commit, killed_at, settled, signals_for, step_count,
                     stopped_before_changes, stopped_by, until)

REPO = "/srv/repos/pshop"
INDEX = """\
<?php
require __DIR__ . '/../vendor/autoload.php';
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$version = trim(file_get_contents(__DIR__ . '/../VERSION'));
if ($path === '/healthz') {
    echo "ok\\n";
    return;
}
if ($path === '/ini') {
    echo ini_get('memory_limit'), ' ', ini_get('upload_max_filesize'), ' ',
         ini_get('post_max_size'), "\\n";
    return;
}
if ($path === '/session') {
    session_start();
    $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1;
    echo 'session ', $_SESSION['n'], "\\n";
    return;
}
if ($path === '/read') {
    $f = @file_get_contents($_GET['f']);
    echo $f === false ? "refused\\n" : "read\\n";
    return;
}
$db = parse_url(getenv('DATABASE_URL'));
$pdo = new PDO(sprintf('pgsql:host=%s;port=%d;dbname=%s', $db['host'], $db['port'],
                       ltrim($db['path'], '/')), urldecode($db['user']), urldecode($db['pass']));
$pdo->exec('CREATE TABLE IF NOT EXISTS hits (n serial)');
$pdo->exec('INSERT INTO hits DEFAULT VALUES');
$hits = $pdo->query('SELECT count(*) FROM hits')->fetchColumn();
$r = parse_url(getenv('REDIS_URL'));
$redis = new Redis();
$redis->connect($r['host'], $r['port']);
$redis->auth($r['pass']);
echo 'pshop ', $version, ' ', Pshop\\Greeting::text(), " hits=$hits redis=", $redis->incr('k'),
     "\\n";
"""
APP = {
    "public/index.php": INDEX,
    "public/style.css": "body { color: teal; }\n",
    "src/Greeting.php": "<?php\nnamespace Pshop;\nclass Greeting { static function text() "
                        "{ return 'hello'; } }\n",
    "composer.json": json.dumps({"name": "siteops/pshop", "require": {},
                                 "autoload": {"psr-4": {"Pshop\\": "src/"}}}),
    "siteops.toml": 'runtime = "php"\nrelease = "php -r \'echo 1;\'"\n\n[frontend]\n'
                    'health = "/healthz"\n\n[php]\nmemory_limit = "96M"\n'
                    'upload_max_filesize = "20M"\n',
    "VERSION": "v1\n",
}


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.siteops("add-site pshop --domain pshop.test --components frontend")
    commit(box, REPO, APP, "v1")
    box.siteops(f"deploy pshop --repo {REPO}")
    return box


def get(box, path: str = "/", site: str = "pshop") -> str:
    return box.sh(f"curl -sS -w ' %{{http_code}}' -H 'Host: {site}.test' "
                  f"'http://127.0.0.1{path}'").stdout


def test_a_php_app_is_served_by_its_own_fpm_over_fastcgi(host):
    assert get(host).startswith("pshop v1 hello hits=1 redis=1\n")
    assert get(host) .startswith("pshop v1 hello hits=2 redis=2\n")
    assert get(host, "/style.css") == "body { color: teal; }\n 200"  # nginx, from the release
    assert get(host, "/.env").endswith(" 403")
    assert get(host, "/ini") == "96M 20M 8M\n 200"
    units = host.sh("systemctl list-units --plain --no-legend 'pshop-frontend@*'").stdout
    assert "active running" in units, units
    procs = host.sh("ps -u pshop -o args=").stdout
    assert "php-fpm: master process" in procs, procs
    # nginx's body size follows the larger of the two.
    conf = host.sh("cat /etc/nginx/sites-available/pshop.conf").stdout
    assert "client_max_body_size 20M;" in conf
    assert get(host, "/session") == "session 1\n 200"


def test_a_neighbour_cannot_reach_the_fpm_or_read_the_sites_files(host):
    host.siteops("add-site pblog --domain pblog.test --components frontend")
    commit(host, "/srv/repos/pblog", dict(APP, VERSION="b1\n"), "b1")
    host.siteops("deploy pblog --repo /srv/repos/pblog")
    site = json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]["pshop"]
    port = 3100 + site["slot"] * 10 + site["live"]["offset"]
    out = host.sh(f"runuser -u pblog -- python3 -I /opt/siteops-src/lib/siteops/fastcgi.py {port} "
                  "/srv/sites/pshop/current/public/index.php / pshop.test").stdout
    assert out.strip() == "0", out  # no answer: the kernel refused the connection
    root = host.sh(f"python3 -I /opt/siteops-src/lib/siteops/fastcgi.py {port} "
                   "/srv/sites/pshop/current/public/index.php /healthz pshop.test").stdout
    assert root.strip() == "200"
    assert get(host, "/read?f=/srv/sites/pshop/shared/.env", "pblog") == "refused\n 200"
    assert get(host, "/read?f=/etc/siteops/restic-password", "pblog") == "refused\n 200"


def test_redeploys_and_a_rollback_under_load_fail_no_request(host):
    load = Load(host, "pshop.test", rate=40)
    for n in (2, 3):
        commit(host, REPO, {"VERSION": f"v{n}\n"}, f"v{n}")
        host.siteops("deploy pshop")
        assert get(host).startswith(f"pshop v{n} hello")  # the very next request
    host.siteops("rollback pshop")
    assert get(host).startswith("pshop v2 hello")
    time.sleep(1)
    samples, failed = load.failed()
    assert len(samples) > 50 and failed == [], failed[:5]
    assert get(host, "/session").endswith(" 200")


def findings(host) -> list[str]:
    res = host.siteops("audit pshop --json", check=False)
    return [f["id"] for f in json.loads(res.stdout)["findings"]
            if f["severity"] != "ok" and f["id"].startswith("site.pshop")]


def test_audit_finds_a_php_site_as_built_and_renders_its_fpm_configuration_again(host):
    assert findings(host) == []
    host.sh("sed -i 's/^pm.max_children = 8/pm.max_children = 500/' /etc/siteops/php-fpm.conf")
    assert findings(host) == ["site.pshop.file:/etc/siteops/php-fpm.conf"]
    host.siteops("audit pshop --fix", check=False)
    assert findings(host) == []
    assert "pm.max_children = 8\n" in host.sh("cat /etc/siteops/php-fpm.conf").stdout


def test_a_sleeping_php_site_runs_no_fpm_and_wakes_on_a_request(host):
    host.siteops("limits pshop --sleep-after 10s")
    deadline = time.time() + 60
    while host.sh("ps -u pshop -o args= || true").stdout.strip():
        assert time.time() < deadline, host.sh("ps -u pshop -o args=").stdout
        time.sleep(1)
    assert get(host).startswith("pshop v2 hello")
    assert get(host, "/style.css") == "body { color: teal; }\n 200"
    host.siteops("limits pshop --sleep-after never")


WIKI = "/srv/repos/wiki"
# Debian's DokuWiki made an app repository: its files with the package's
# links resolved, its configuration in conf/ (the package reads /etc), the
# data skeleton copied into shared/uploads by the release command.
WIKI_REPO = f"""\
rm -rf {WIKI}; mkdir -p {WIKI}/conf
cp -rL /usr/share/dokuwiki/. {WIKI}/ 2>/dev/null || true
cp -rL /etc/dokuwiki/. {WIKI}/conf/ 2>/dev/null || true
cp -r /var/lib/dokuwiki/data {WIKI}/data-skeleton
rm -f {WIKI}/.htaccess {WIKI}/conf/.htaccess {WIKI}/inc/preload.php
"""
WIKI_FILES = {
    "inc/preload.php": "<?php\ndefine('DOKU_CONF', DOKU_INC . 'conf/');\n",
    "conf/local.php": "<?php\n$conf['savedir'] = DOKU_INC . 'uploads/wiki';\n"
                      "$conf['useacl'] = 0;\n",
    # git keeps no empty directory: the release command makes DokuWiki's.
    "siteops.toml": 'runtime = "php"\nweb_root = "."\n'
                    'release = "' + " && ".join(
                        [f"mkdir -p uploads/wiki/{d}" for d in (
                            "attic", "cache", "index", "locks", "log", "media", "media_attic",
                            "media_meta", "meta", "pages", "tmp")]
                        + ["cp -rn data-skeleton/. uploads/wiki/"]) + '"\n\n'
                    '[frontend]\nhealth = "/doku.php"\n',
}


def wiki_save(host, page: str, text: str) -> None:
    """Save a page the way a browser does: the edit form's hidden fields, then a POST."""
    form = host.sh(f"curl -sS -c /tmp/wjar -b /tmp/wjar -H 'Host: wiki.test' "
                   f"'http://127.0.0.1/doku.php?id={page}&do=edit'").stdout
    fields = {}
    for tag in re.findall(r"<input[^>]*>", form):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
        if attrs.get("type") == "hidden" and "name" in attrs:
            fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
    assert "sectok" in fields, form[-1500:]
    fields.update({"wikitext": text, "do[save]": "1", "id": page})
    data = " ".join(f"--data-urlencode {shlex.quote(k + '=' + v)}" for k, v in fields.items())
    host.sh(f"curl -sS -o /dev/null -c /tmp/wjar -b /tmp/wjar -H 'Host: wiki.test' {data} "
            "http://127.0.0.1/doku.php")


def test_dokuwiki_from_debian_keeps_its_pages_in_shared_across_deploys(host):
    host.sh(WIKI_REPO)
    commit(host, WIKI, WIKI_FILES, "dokuwiki")
    host.siteops("add-site wiki --domain wiki.test --components frontend")
    host.siteops(f"deploy wiki --repo {WIKI}")
    wiki_save(host, "start", "siteops keeps ====== this page ======")
    page = host.sh("curl -sS -H 'Host: wiki.test' 'http://127.0.0.1/doku.php?id=start'").stdout
    assert "siteops keeps" in page, page[-1500:]
    stored = "/srv/sites/wiki/shared/uploads/wiki/pages/start.txt"
    assert host.sh(f"stat -c %U {stored}; cat {stored}").stdout == \
        "wiki\nsiteops keeps ====== this page ======"
    commit(host, WIKI, {"conf/local.php": WIKI_FILES["conf/local.php"]
                        + "$conf['title'] = 'Second release';\n"}, "title")
    host.siteops("deploy wiki")
    page = host.sh("curl -sS -H 'Host: wiki.test' 'http://127.0.0.1/doku.php?id=start'").stdout
    assert "siteops keeps" in page and "Second release" in page, page[-1500:]
    assert "savedir" not in get(host, "/conf/local.php", "wiki")  # run by PHP, never shown
    # shared/ is closed to nginx: the request falls through to DokuWiki.
    assert "siteops keeps" not in get(host, "/uploads/wiki/pages/start.txt", "wiki")


def test_a_php_deploy_stopped_at_every_step_keeps_serving_and_converges(host):
    """deploy stopped (KILL, INT, TERM in turn) after each of its steps and
    before each change of the registry, under load: no failed request, and
    the deploy run again serves the new release (composer, the release
    command and the FPM instance included)."""
    if "bookworm" not in str(host.image):
        pytest.skip("the crash harness runs on Debian 12 only (CI time)")
    commit(host, REPO, {"VERSION": "k\n"}, "k")
    n = step_count(host.siteops("deploy pshop").stdout)
    load = Load(host, "pshop.test", rate=20)
    stops = 0
    for i, (k, signal) in enumerate(signals_for(n)):
        commit(host, REPO, {"VERSION": f"k{i}\n"}, f"k{i}")
        stops += stopped_by(killed_at(host, k, "deploy pshop", signal), signal)
        host.siteops("deploy pshop")
        assert get(host).startswith(f"pshop k{i} hello"), (k, signal)
    version = "c0"
    commit(host, REPO, {"VERSION": "c0\n"}, "c0")

    def again(label) -> None:
        host.siteops("deploy pshop")
        assert get(host).startswith(f"pshop {version} hello"), label
    changes = stopped_before_changes(host, "deploy pshop", again)
    samples, failed = load.failed()
    print(f"php deploy: {n} steps, {stops} stopped after a step, {changes} before a registry "
          f"change, {len(samples)} requests, {len(failed)} failed")
    assert stops == n and changes >= 3 and len(samples) > 100 and failed == [], failed[:5]
    settled(host, "pshop")


def test_adminer_from_debian_reaches_the_sites_own_database_and_no_other(host):
    """Adminer (Debian's package, its one-file build) deployed as a site:
    logged in with the site's own credentials it lists the site's database;
    the same credentials on a neighbour's database are refused by PostgreSQL."""
    repo = "/srv/repos/dba"
    host.sh(f"mkdir -p {repo} && cp /usr/share/adminer/adminer.php {repo}/index.php")
    commit(host, repo, {"siteops.toml": 'runtime = "php"\n'}, "adminer")
    host.siteops("add-site dba --domain dba.test --components frontend")
    host.siteops(f"deploy dba --repo {repo}")
    env = dict(line.split("=", 1) for line in host.sh(
        "grep -E '^DATABASE_URL=' /srv/sites/dba/shared/.env").stdout.split())
    url = env["DATABASE_URL"]  # postgresql://USER:PASSWORD@localhost:5432/DB
    user, rest = url.removeprefix("postgresql://").split(":", 1)
    password, _, database = rest.partition("@localhost:5432/")

    def login(db: str) -> str:
        host.sh("rm -f /tmp/jar; curl -sS -c /tmp/jar -b /tmp/jar -H 'Host: dba.test' "
                "http://127.0.0.1/ >/dev/null")
        return host.sh(
            "curl -sS -L -c /tmp/jar -b /tmp/jar -H 'Host: dba.test' "
            "--data-urlencode 'auth[driver]=pgsql' --data-urlencode 'auth[server]=localhost' "
            f"--data-urlencode 'auth[username]={user}' --data-urlencode 'auth[db]={db}' "
            "--data-urlencode 'auth[password]@/tmp/pw' http://127.0.0.1/",
            input=None).stdout
    host.sh("cat > /tmp/pw", input=password)
    page = login(database)
    assert "Logout" in page and database in page, page[-2000:]
    page = login("pshop")
    assert "Logout" not in page and "no pg_hba.conf entry" in page, page[-2000:]


JOBS = {
    "public/index.php": """\
<?php
$r = parse_url(getenv('REDIS_URL'));
$redis = new Redis();
$redis->connect($r['host'], $r['port']);
$redis->auth($r['pass']);
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
if ($path === '/enqueue') {
    $redis->rPush('jobs', $_GET['v']);
    echo "queued\\n";
} else {
    echo implode(' ', $redis->lRange('done', 0, -1)), "\\n";
}
""",
    # A queue consumer: each item taken is written back with the release that took it.
    "worker.php": """\
<?php
$r = parse_url(getenv('REDIS_URL'));
$redis = new Redis();
$redis->connect($r['host'], $r['port']);
$redis->auth($r['pass']);
while (true) {
    $item = $redis->blPop(['jobs'], 5);
    if ($item) {
        $redis->rPush('done', $item[1] . '@' . getenv('SITEOPS_RELEASE'));
    }
}
""",
    "tick.php": """\
<?php
$db = parse_url(getenv('DATABASE_URL'));
$pdo = new PDO(sprintf('pgsql:host=%s;port=%d;dbname=%s', $db['host'], $db['port'],
                       ltrim($db['path'], '/')), urldecode($db['user']), urldecode($db['pass']));
$pdo->exec('CREATE TABLE IF NOT EXISTS ticks (at timestamptz DEFAULT now())');
$pdo->exec('INSERT INTO ticks DEFAULT VALUES');
""",
    "siteops.toml": 'runtime = "php"\n\n[frontend]\n\n[workers.q]\ncommand = "php worker.php"\n\n'
                    '[jobs.tick]\nschedule = "*:*:0/5"\ncommand = "php tick.php"\n',
    "VERSION": "1\n",
}


def live_release(host, site: str) -> str:
    return json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)["sites"][site][
        "live"]["release"]


def test_a_php_queue_worker_and_a_scheduled_job_run_as_for_any_runtime(host):
    """A PHP worker (phpredis, a blocking pop) takes the queue's items, the
    new release's worker every item enqueued after a deploy; a PHP job
    writes to the site's database on its schedule."""
    commit(host, "/srv/repos/pjobs", JOBS, "j1")
    host.siteops("add-site pjobs --domain pjobs.test --components frontend")
    host.siteops("deploy pjobs --repo /srv/repos/pjobs")
    first = live_release(host, "pjobs")
    for item in ("a", "b", "c"):
        assert get(host, f"/enqueue?v={item}", "pjobs") == "queued\n 200"
    until(lambda: get(host, "/", "pjobs") == f"a@{first} b@{first} c@{first}\n 200",
          get(host, "/", "pjobs"))
    commit(host, "/srv/repos/pjobs", {"VERSION": "2\n"}, "j2")
    host.siteops("deploy pjobs")
    second = live_release(host, "pjobs")
    assert get(host, "/enqueue?v=d", "pjobs") == "queued\n 200"
    until(lambda: get(host, "/", "pjobs").endswith(f" d@{second}\n 200"), get(host, "/", "pjobs"))
    ticks = "runuser -u postgres -- psql -At -d pjobs -c 'SELECT count(*) FROM ticks' 2>/dev/null"
    until(lambda: host.sh(ticks, check=False).stdout.strip() not in ("", "0"),
          "no tick within 30 s")
    assert "pjobs-worker" in host.sh("ps -u pjobs -o unit=").stdout


def php_fingerprint(host, site: str, data: str) -> dict:
    """Checksums of a site's data: its database rows (in order), the files
    under shared/uploads/DATA (path, mode, owner, content), its .env."""
    sh = host.sh
    return {
        "db": sh(f"runuser -u postgres -- pg_dump --data-only --inserts --no-comments {site} "
                 "| grep '^INSERT' | sort | sha256sum").stdout.split()[0],
        "files": sh(f"cd /srv/sites/{site}/shared/uploads/{data} && find . -type f "
                    "-printf '%p %m %u\\n' -exec sha256sum {} + | sort").stdout,
        "env": sh(f"sha256sum < /srv/sites/{site}/shared/.env").stdout.split()[0],
    }


def test_a_backup_restores_php_sites_identical(host):
    """pshop (its database, its PHP sessions) and DokuWiki (its pages and
    their history in shared/) backed up, damaged, restored: identical, and
    served again by their FPMs."""
    data = {"pshop": ".sessions", "wiki": "wiki/pages wiki/attic"}
    assert get(host, "/session").endswith(" 200")
    before = {site: php_fingerprint(host, site, d.split()[0]) for site, d in data.items()}
    pages = host.sh("cd /srv/sites/wiki/shared/uploads/wiki && find pages attic -type f "
                    "-exec sha256sum {} + | sort").stdout
    assert "start.txt" in pages and before["pshop"]["files"].count("sess_") >= 1
    for site in data:
        host.siteops(f"backup {site}")
    wiki_save(host, "start", "vandalised")
    host.sh("runuser -u postgres -- psql -q -d pshop -c 'DELETE FROM hits' && "
            "rm -f /srv/sites/pshop/shared/uploads/.sessions/sess_*")
    assert "vandalised" in host.sh("cat /srv/sites/wiki/shared/uploads/wiki/pages/start.txt").stdout
    assert php_fingerprint(host, "pshop", ".sessions") != before["pshop"]
    for site in data:
        host.siteops(f"restore {site} --yes")
    assert {site: php_fingerprint(host, site, d.split()[0]) for site, d in data.items()} == before
    assert host.sh("cd /srv/sites/wiki/shared/uploads/wiki && find pages attic -type f "
                   "-exec sha256sum {} + | sort").stdout == pages
    page = host.sh("curl -sS -H 'Host: wiki.test' 'http://127.0.0.1/doku.php?id=start'").stdout
    assert "siteops keeps" in page and "vandalised" not in page, page[-1500:]
    assert re.match(r"pshop \S+ hello hits=\d+ redis=\d+\n 200", get(host)), get(host)
