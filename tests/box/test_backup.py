"""backup, restore and remove-site on real booted Debian 12 and 13 machines: data
written through a real app into the site's PostgreSQL, Redis and uploads,
backed up with restic, damaged, restored and compared; a site removed under
load; and disaster recovery on a second machine that brings back exactly the
host that was backed up (a removed site left out, slots taken there by other
sites, every site's app talking to its own Redis and database)."""

import json
import tempfile
import time
from pathlib import Path

import pytest

from machine import SRC, Box, Load, commit

# Writes through the site's own services: PostgreSQL (psql with the .env's
# credentials, password in the environment), Redis (redis-cli, REDISCLI_AUTH)
# and shared/uploads; reads them back.
NOTES_APP = """\
import http.server, os, subprocess, sys, urllib.parse
db = urllib.parse.urlsplit(os.environ["DATABASE_URL"])
rd = urllib.parse.urlsplit(os.environ["REDIS_URL"])
PG = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", db.hostname,
      "-p", str(db.port), "-U", db.username, "-d", db.path[1:]]
PG_ENV = dict(os.environ, PGPASSWORD=db.password)
RD = ["redis-cli", "-h", rd.hostname, "-p", str(rd.port), "--no-auth-warning"]
RD_ENV = dict(os.environ, REDISCLI_AUTH=rd.password)
UPLOADS = os.path.join(os.path.dirname(os.path.dirname(os.getcwd())), "shared", "uploads")
subprocess.run(PG, input="CREATE TABLE IF NOT EXISTS notes (k text PRIMARY KEY, v text);",
               text=True, env=PG_ENV, check=True)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/put":
            k, v = q["k"], q["v"]
            subprocess.run(PG, input=f"INSERT INTO notes VALUES ('{k}', '{v}') "
                           f"ON CONFLICT (k) DO UPDATE SET v = '{v}';", text=True,
                           env=PG_ENV, check=True)
            subprocess.run(RD + ["SET", k, v], env=RD_ENV, check=True, capture_output=True)
            with open(os.path.join(UPLOADS, k + ".txt"), "w") as f:
                f.write(v)
            body = "stored\\n"
        elif url.path == "/get":
            k = q["k"]
            row = subprocess.run(PG, input=f"SELECT v FROM notes WHERE k = '{k}';", text=True,
                                 env=PG_ENV, capture_output=True).stdout.strip()
            cached = subprocess.run(RD + ["GET", k], env=RD_ENV, capture_output=True,
                                    text=True).stdout.strip()
            try:
                upload = open(os.path.join(UPLOADS, k + ".txt")).read()
            except OSError:
                upload = "-"
            body = f"db={row} redis={cached} upload={upload}\\n"
        else:
            body = f"{os.environ['SITE']} notes {os.environ['PORT']}\\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""

SITES = ("shop", "blog")


def curl(box, site: str, path: str = "/") -> str:
    return box.sh(f"curl -sS -H 'Host: {site}.test' 'http://127.0.0.1{path}'").stdout


def add_notes_site(box, site: str) -> None:
    box.siteops(f"add-site {site} --domain {site}.test --components frontend "
                f"--start frontend='/usr/bin/env SITE={site} python3 app.py'")
    commit(box, f"/srv/repos/{site}", {"app.py": NOTES_APP}, site)
    box.siteops(f"deploy {site} --repo /srv/repos/{site}")


def fingerprint(box, site: str) -> dict:
    """Checksums of the site's data: its database dump (data only, in key
    order), its uploads tree, its Redis keys, its .env."""
    sh = box.sh
    return {
        "db": sh(f"runuser -u postgres -- pg_dump --data-only --inserts --no-comments {site} "
                 "| grep '^INSERT' | sort | sha256sum").stdout.split()[0],
        "rows": sh(f"runuser -u postgres -- psql -At -d {site} -c 'SELECT count(*) FROM notes'")
        .stdout.strip(),
        "uploads": sh(f"cd /srv/sites/{site}/shared/uploads && find . -type f -printf '%p %m "
                      "%u\\n' -exec sha256sum {} + | sort | sha256sum").stdout.split()[0],
        "redis": curl(box, site, "/get?k=k7"),
        "env": sh(f"sha256sum < /srv/sites/{site}/shared/.env").stdout.split()[0],
    }


def snapshots(box, site: str) -> list:
    return json.loads(box.siteops(f"backup --list --json {site}").stdout)


@pytest.fixture(scope="module")
def share(image):  # one per suite: each box makes its own repository
    path = Path(tempfile.mkdtemp(prefix="siteops-share-"))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def host(image, share):
    """A box whose backups go to /srv/share/restic, a directory the second
    (recovery) box also sees; shop and blog deployed, with 20 notes each."""
    box = Box(image, binds={str(share): "/srv/share"})
    try:
        box.start()
        box.siteops("bootstrap")
        box.siteops("backup --repository /srv/share/restic")
        for site in SITES:
            add_notes_site(box, site)
            for i in range(20):
                assert curl(box, site, f"/put?k=k{i}&v={site}-value-{i}") == "stored\n"
        yield box
    finally:
        box.stop()


def test_bootstrap_made_the_repository_and_the_daily_timer(host):
    assert host.sh("stat -c '%a %U' /etc/siteops/restic-password").stdout.strip() == "600 root"
    assert host.sh("systemctl is-active siteops-backup.timer").stdout.strip() == "active"
    assert "RESTIC_REPOSITORY=/srv/share/restic" in host.sh("cat /etc/siteops/backup.env").stdout
    # The old default repository, made by bootstrap, stays where it was.
    assert host.sh("test -f /var/backups/siteops/config", check=False).returncode == 0


def test_a_backup_restores_the_data_exactly(host):
    before = fingerprint(host, "shop")
    assert before["rows"] == "20" and before["redis"] == "db=shop-value-7 redis=shop-value-7 " \
        "upload=shop-value-7\n"
    out = host.siteops("backup shop").stdout
    assert "snapshot" in out and snapshots(host, "shop")
    # Damage everything the snapshot holds.
    host.sh("runuser -u postgres -- psql -q -d shop -c \"DELETE FROM notes WHERE k <> 'k7'; "
            "UPDATE notes SET v = 'corrupt'; CREATE TABLE stray (x int);\"")
    uploads = "/srv/sites/shop/shared/uploads"
    host.sh(f"rm {uploads}/k1.txt && echo corrupt > {uploads}/k7.txt && "
            f"runuser -u shop -- touch {uploads}/stray.txt")
    env = dict(l.split("=", 1) for l in host.sh("cat /srv/sites/shop/shared/.env").stdout
               .splitlines() if "=" in l and not l.startswith("#"))
    password = env["REDIS_URL"].split(":")[2].split("@")[0]
    host.sh(f"REDISCLI_AUTH={password} redis-cli -p 5000 --no-auth-warning FLUSHALL")
    host.sh("echo EXTRA=1 >> /srv/sites/shop/shared/.env")
    assert fingerprint(host, "shop") != before

    res = host.siteops("restore shop", check=False)
    assert res.returncode == 2 and "pass --yes" in res.stderr
    host.siteops("restore shop --yes")
    assert fingerprint(host, "shop") == before
    assert host.sh("runuser -u postgres -- psql -At -d shop -c "
                   "\"SELECT count(*) FROM pg_tables WHERE tablename = 'stray'\"").stdout.strip() == "0"
    assert host.sh("stat -c %U /srv/sites/shop/shared/uploads/k7.txt").stdout.strip() == "shop"
    tags = [s["tags"] for s in snapshots(host, "shop")]
    assert ["site:shop", "before-restore"] in tags  # what the restore replaced
    doc = json.loads(host.siteops("audit --json", check=False).stdout)
    bad = [f for f in doc["findings"] if f["severity"] != "ok"]
    assert bad == [], bad


def test_the_second_backup_of_an_unchanged_site_is_quick_and_drops_no_request(host):
    host.siteops("backup shop")
    load = Load(host, "shop.test")
    start = time.monotonic()
    host.siteops("backup shop")
    seconds = time.monotonic() - start
    samples, failed = load.failed()
    print(f"\nincremental backup of an unchanged site: {seconds:.2f} s "
          f"({len(samples)} requests during it and around it, {len(failed)} failed)")
    assert failed == [] and len(samples) > 20


def test_a_site_backup_runs_in_the_site_slice(host):
    # Sample the cgroup of every pg_dump and restic process while it runs.
    sampler = ("while :; do for p in $(pgrep -x 'pg_dump|restic'); do "
               "c=$(cat /proc/$p/comm) && g=$(tr '\\n' ' ' < /proc/$p/cgroup) && "
               "a=$(cat /proc/$p/oom_score_adj) && echo \"$c $g $a\"; "
               "done; sleep 0.005; done")
    out = host.sh(f"({sampler}) > /tmp/cg 2>/dev/null & w=$!; {SRC}/bin/backup shop >/dev/null; "
                  "kill $w; sort -u /tmp/cg").stdout
    seen = {line.split()[0]: line for line in out.splitlines()}
    for program in ("pg_dump", "restic"):
        assert program in seen, out
        assert "/siteops.slice/siteops-shop.slice/run-" in seen[program], seen[program]
        assert seen[program].endswith(" 500"), seen[program]


def verified(box) -> dict:
    return json.loads(box.sh("cat /var/lib/siteops/verified.json").stdout)


def no_scratch_left(box, site: str) -> None:
    assert box.sh(f"test -e /var/lib/siteops/verify/{site}", check=False).returncode != 0
    assert box.sh(f"runuser -u postgres -- psql -At -c \"SELECT count(*) FROM pg_database "
                  f"WHERE datname = '{site}__verify'\"").stdout.strip() == "0"


def audit_finding(box, id_: str) -> dict:
    doc = json.loads(box.siteops("audit --json", check=False).stdout)
    return next(f for f in doc["findings"] if f["id"] == id_)


def test_verify_restores_each_sites_newest_snapshot_into_scratch_space(host):
    assert host.sh("systemctl is-active siteops-verify.timer").stdout.strip() == "active"
    host.siteops("backup")
    out = host.siteops("backup --verify").stdout
    assert "repository checked" in out and "shop: 1 table(s), 20 row(s), files as listed" in out
    assert "verified the repository and 2 site(s)" in out, out
    assert {n: r["ok"] for n, r in verified(host).items()} == {"shop": True, "blog": True}
    for site in SITES:
        no_scratch_left(host, site)
    assert audit_finding(host, "site.shop.backup_verified")["severity"] == "ok"


def test_verify_names_a_dump_that_does_not_load_and_removes_its_scratch_space(host):
    host.siteops("backup shop")
    # A snapshot of shop whose dump is damaged (bit rot, a full disk at dump time).
    host.sh("truncate -s 2000 /var/lib/siteops/backup/shop/database.dump && "
            "RESTIC_REPOSITORY=/srv/share/restic RESTIC_PASSWORD_FILE=/etc/siteops/restic-password "
            "restic --quiet backup --tag site:shop /var/lib/siteops/backup/shop "
            "/srv/sites/shop/shared/uploads /srv/sites/shop/shared/.env "
            "/srv/sites/shop/shared/redis")
    res = host.siteops("backup --verify shop", check=False)
    assert res.returncode == 1 and "verification failed: shop" in res.stderr, res.stderr
    assert "shop: the database dump" in res.stdout, res.stdout
    assert verified(host)["shop"]["ok"] is False
    no_scratch_left(host, "shop")
    finding = audit_finding(host, "site.shop.backup_verified")
    assert finding["severity"] == "warning" and "failed" in finding["message"]
    host.siteops("backup shop")
    host.siteops("backup --verify shop")
    assert verified(host)["shop"]["ok"] is True


def test_verify_catches_a_truncated_pack_file(host):
    pack = host.sh("ls -S /srv/share/restic/data/*/* | head -n 1").stdout.strip()
    host.sh(f"cp -p {pack} /root/pack.saved && truncate -s 100 {pack}")
    try:
        res = host.siteops("backup --verify blog", check=False)
        assert res.returncode == 1 and "the repository" in res.stderr, res.stderr
        assert "restic check found damage" in res.stdout, res.stdout
        no_scratch_left(host, "blog")
    finally:
        host.sh(f"mv /root/pack.saved {pack}")
    host.siteops("backup --verify blog")


def test_audit_reports_an_unreadable_repository(host):
    host.sh("mv /etc/siteops/restic-password /etc/siteops/restic-password.away")
    try:
        doc = json.loads(host.siteops("audit --json", check=False).stdout)
        finding = next(f for f in doc["findings"] if f["id"] == "host.backup")
        assert finding["severity"] == "critical", finding
    finally:
        host.sh("mv /etc/siteops/restic-password.away /etc/siteops/restic-password")


# Units of a removed site that systemd still lists: none may have a unit file
# (not-found: nothing on disk, no process; systemd forgets such a unit at its
# next garbage collection, which a busy machine can delay past the command's
# end) and the slice none but the implicit, inactive one its members name.
UNITS_LEFT = ("systemctl list-units --all --plain --no-legend {} "
              "| awk '$2 != \"not-found\" && !($1 ~ /[.]slice$/ && $3 == \"inactive\")'")

LEFTOVERS = """\
getent passwd blog; getent group blog
ls -d /srv/sites/blog /etc/nginx/sites-*/blog.conf /etc/logrotate.d/siteops-blog \
  /etc/siteops/redis/blog.conf /var/lib/siteops/mirrors/blog.git /var/lib/siteops/locks/blog.lock \
  /var/lib/siteops/backup/blog /etc/letsencrypt/*/blog* /var/www/siteops-placeholder/blog \
  /etc/systemd/system/blog-* /etc/systemd/system/*/blog-* /etc/systemd/system/siteops-blog.slice
{units}
systemctl list-timers --all --plain --no-legend | grep blog
runuser -u postgres -- psql -At -c "SELECT 'role' FROM pg_roles WHERE rolname = 'blog' \
  UNION ALL SELECT 'database' FROM pg_database WHERE datname = 'blog'"
grep -l '"blog"' /var/lib/siteops/registry.json
nft list table inet siteops | grep 'site blog'
ss -ltnp | grep -E ':(311[0-9]|501[0-9]) '
true
""".format(units=UNITS_LEFT.format("'blog-*' 'siteops-blog.slice'"))


def test_remove_site_leaves_nothing_but_its_backups_and_spares_the_others(host):
    res = host.siteops("remove-site blog", check=False)
    assert res.returncode == 2 and "nothing was changed" in res.stderr
    assert curl(host, "blog").startswith("blog notes")
    load = Load(host, "shop.test")
    # Killed mid-way (its final backup alone takes longer), then run again: it finishes.
    host.sh(f"setsid {SRC}/bin/remove-site blog --yes >/tmp/rm1.log 2>&1 & pid=$!; "
            "sleep 1; kill -KILL -- -$pid")
    assert "site blog removed" not in host.sh("cat /tmp/rm1.log").stdout
    out = host.siteops("remove-site blog --yes").stdout
    samples = load.stop()
    assert "site blog removed" in out
    failed = [s for s in samples if s[2] != 200]
    assert failed == [] and len(samples) > 20, failed[:5]
    left = host.sh(LEFTOVERS, check=False).stdout.strip()
    assert left == "", left
    assert host.sh("curl -s -o /dev/null -w '%{http_code}' -H 'Host: blog.test' "
                   "http://127.0.0.1/", check=False).stdout in ("000", "444")
    assert any("removed" in s["tags"] for s in snapshots(host, "blog"))  # the final backup
    doc = json.loads(host.siteops("audit --json", check=False).stdout)
    bad = [f for f in doc["findings"] if f["severity"] != "ok"]
    assert bad == [] and not any(f["subject"] == "blog" for f in doc["findings"]), bad
    res = host.siteops("remove-site blog --yes", check=False)
    assert res.returncode == 2 and "nothing of it on this host" in res.stderr
    # Its slot is free again.
    host.siteops("add-site press --domain press.test --components frontend")
    assert json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)["sites"]["press"][
        "slot"] == 1


def test_remove_site_keep_data_keeps_the_database_tree_and_owner_until_asked(host):
    if "press" not in host.sh("cat /var/lib/siteops/registry.json").stdout:
        host.siteops("add-site press --domain press.test --components frontend")
    host.siteops("remove-site press --keep-data --no-backup --yes")
    assert host.sh("runuser -u postgres -- psql -At -c \"SELECT rolcanlogin FROM pg_roles "
                   "WHERE rolname = 'press'\"").stdout.strip() == "f"
    assert host.sh("runuser -u postgres -- psql -At -c \"SELECT 1 FROM pg_database "
                   "WHERE datname = 'press'\"").stdout.strip() == "1"
    assert host.sh("stat -c %U /srv/sites/press/shared/.env").stdout.strip() == "press"
    assert "press" not in host.sh("cat /var/lib/siteops/registry.json").stdout
    assert host.sh(UNITS_LEFT.format("'press-*'")).stdout == ""
    host.siteops("remove-site press --yes")  # the rest, later
    assert host.sh("getent passwd press; ls -d /srv/sites/press; runuser -u postgres -- psql "
                   "-At -c \"SELECT 1 FROM pg_roles WHERE rolname = 'press'\"",
                   check=False).stdout.strip() == ""


def env_of(box, site: str) -> dict:
    return dict(line.split("=", 1) for line in box.sh(f"cat /srv/sites/{site}/shared/.env")
                .stdout.splitlines() if "=" in line and not line.startswith("#"))


def slots(box) -> dict:
    return {n: s["slot"] for n, s in json.loads(
        box.sh("cat /var/lib/siteops/registry.json").stdout)["sites"].items()}


def redis_get(box, site: str, port: int, key: str) -> str:
    """GET key from the Redis on port, with site's own password (its .env)."""
    password = env_of(box, site)["REDIS_URL"].split(":")[2].split("@")[0]
    return box.sh(f"REDISCLI_AUTH={password} redis-cli -p {port} --no-auth-warning GET {key}",
                  check=False).stdout.strip()


def test_recovery_brings_back_exactly_the_host_that_was_backed_up(host, image, share):
    # On the old host: blog was removed (its final backup kept), and press,
    # added after, took blog's freed slot 1. Then a full backup.
    assert "blog" not in slots(host)
    add_notes_site(host, "press")
    # press also runs a worker and a scheduled job: their template, drop-ins
    # and timer are part of what is backed up and restored.
    commit(host, "/srv/repos/press", {"siteops.toml": '[workers.tick]\ncommand = "sleep infinity"\n'
                                      '[jobs.stamp]\nschedule = "hourly"\ncommand = "true"\n'},
           "worker and job")
    host.siteops("deploy press")
    assert slots(host) == {"shop": 0, "press": 1}
    for i in range(20):
        curl(host, "press", f"/put?k=k{i}&v=press-value-{i}")
    host.siteops("backup")
    # The snapshot holds every file audit expects of the site (parts.py).
    expected = [f["id"].split(".file:", 1)[1] for f in json.loads(
        host.siteops("audit press --json", check=False).stdout)["findings"]
        if f["id"].startswith("site.press.file:")]
    held = host.sh("RESTIC_REPOSITORY=/srv/share/restic RESTIC_PASSWORD_FILE=/etc/siteops/"
                   "restic-password restic ls --no-lock latest --tag site:press").stdout.split("\n")
    assert any("press-worker@.service" in p for p in expected)
    assert any("press-job-stamp.timer" in p for p in expected)
    assert [p for p in expected if p not in held] == []
    before = {site: fingerprint(host, site) for site in ("shop", "press")}
    envs = {site: env_of(host, site) for site in ("shop", "press")}
    password = host.sh("cat /etc/siteops/restic-password").stdout

    fresh = Box(image, binds={str(share): "/srv/share"})
    try:
        fresh.start()
        fresh.siteops("bootstrap")
        # This host already runs a site in shop's slot 0, with its own data.
        add_notes_site(fresh, "wiki")
        curl(fresh, "wiki", "/put?k=k7&v=wiki-value-7")
        wiki = fingerprint(fresh, "wiki")
        fresh.sh("cat > /etc/siteops/restic-password", input=password)
        fresh.siteops("backup --repository /srv/share/restic")

        out = fresh.siteops("restore --all --yes").stdout
        assert "recreate     press, shop\n" in out, out
        assert "left out     blog (removed from the host" in out, out
        assert "restored 2 site(s)" in out, out
        assert slots(fresh) == {"wiki": 0, "press": 1, "shop": 2}  # shop's slot was taken
        assert fresh.sh("getent passwd blog", check=False).stdout == ""
        for site in ("shop", "press"):
            have, want = fingerprint(fresh, site), before[site]
            # Through the app: its rows, Redis keys and uploads, as backed up.
            assert {k: v for k, v in have.items() if k != "env"} == \
                {k: v for k, v in want.items() if k != "env"}, site
            assert have["redis"] == f"db={site}-value-7 redis={site}-value-7 " \
                f"upload={site}-value-7\n"
        assert fresh.sh("systemctl is-active press-job-stamp.timer "
                        "press-worker@tick-1-0.service").stdout.split() == ["active", "active"]
        # Every secret came back; only shop's Redis port follows its new slot.
        assert env_of(fresh, "press") == envs["press"]
        moved = dict(envs["shop"], REDIS_URL=envs["shop"]["REDIS_URL"].replace(
            "@127.0.0.1:5000/", "@127.0.0.1:5020/"))
        assert env_of(fresh, "shop") == moved and moved != envs["shop"]
        # New writes land in each site's own Redis, never in a neighbour's.
        assert curl(fresh, "shop", "/put?k=fresh&v=shop-fresh") == "stored\n"
        assert redis_get(fresh, "shop", 5020, "fresh") == "shop-fresh"
        assert redis_get(fresh, "wiki", 5000, "fresh") == ""
        assert fingerprint(fresh, "wiki") == wiki  # the site already here is untouched

        # The removed site comes back only when named, in a free slot (its own,
        # 1, is press's now), talking to its own Redis.
        out = fresh.siteops("restore blog --yes").stdout
        assert "slot 1 of blog is taken here: it gets slot 3" in out, out
        assert curl(fresh, "blog", "/get?k=k7") == \
            "db=blog-value-7 redis=blog-value-7 upload=blog-value-7\n"
        assert env_of(fresh, "blog")["REDIS_URL"].endswith("@127.0.0.1:5030/0")
        doc = json.loads(fresh.siteops("audit --json", check=False).stdout)
        bad = [f for f in doc["findings"] if f["severity"] != "ok"
               and not f["id"].endswith(".backup")]
        assert bad == [], bad

        # shop's REDIS_URL pointed by hand at press's Redis: audit says so (the
        # password never shown), and audit --fix points it back.
        shop_password = envs["shop"]["REDIS_URL"].split(":")[2].split("@")[0]
        fresh.sh("sed -i 's/@127.0.0.1:5020\\//@127.0.0.1:5010\\//' /srv/sites/shop/shared/.env")
        fresh.sh("systemctl restart 'shop-frontend@*.service'")  # the app reads it
        for _ in range(50):  # until the restarted app listens again
            answer = curl(fresh, "shop", "/get?k=k7")
            if answer.startswith("db="):
                break
            time.sleep(0.2)
        assert answer.startswith("db=shop-value-7 ") and "redis=shop-value-7" not in answer, \
            answer  # its own keys are out of its reach: press's Redis refuses its password
        res = fresh.siteops("audit --json", check=False)
        assert res.returncode == 2 and shop_password not in res.stdout + res.stderr
        finding = next(f for f in json.loads(res.stdout)["findings"]
                       if f["id"] == "site.shop.env.urls")
        assert finding["severity"] == "critical" and "127.0.0.1:5010" in finding["message"], \
            finding
        res = fresh.siteops("audit --fix", check=False)
        assert "site.shop.env.urls" not in res.stdout and shop_password not in res.stdout, \
            res.stdout
        assert env_of(fresh, "shop") == moved
        assert curl(fresh, "shop", "/get?k=k7") == \
            "db=shop-value-7 redis=shop-value-7 upload=shop-value-7\n"
    finally:
        fresh.stop()
