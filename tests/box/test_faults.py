"""Faults around the suite on booted Debian 12 and 13 machines: another
site's nginx file broken by hand, a file siteops does not manage broken,
PostgreSQL stopped or the site's Redis unable to start during add-site, the
disk full during a build, and an unreadable registry or lock. Each: one clear error line (or a note when
siteops repairs its own file), nothing lost, and a re-run that completes."""


import pytest

from machine import PYTHON_APP, commit


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.two_sites({})
    return box


def page(box, name):
    return box.sh(f"curl -sS -H 'Host: {name}.test' http://127.0.0.1/").stdout


def error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and lines and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_another_sites_hand_broken_nginx_file_never_blocks_a_deploy(host):
    host.sh("echo 'this is not nginx;' >> /etc/nginx/sites-available/blog.conf")
    assert host.sh("nginx -t", check=False).returncode != 0
    commit(host, "/srv/repos/shop", {"app.py": PYTHON_APP.replace("python", "python v2")}, "v2")
    out = host.siteops("deploy shop").stdout
    assert "/etc/nginx/sites-enabled/blog.conf (site blog) was edited by hand" in out
    host.sh("nginx -t")
    assert "shop python v2" in page(host, "shop") and "blog python" in page(host, "blog")
    # A file siteops does not manage: named, and nothing changes.
    host.sh("echo 'broken;' > /etc/nginx/conf.d/zz-by-hand.conf")
    before = host.sh("md5sum /etc/nginx/sites-available/shop.conf").stdout
    commit(host, "/srv/repos/shop", {"app.py": PYTHON_APP.replace("python", "python v3")}, "v3")
    line = error_line(host.siteops("deploy shop", check=False))
    assert "nginx -t fails because of /etc/nginx/conf.d/zz-by-hand.conf, which siteops does " \
           "not manage: fix or remove it" in line
    assert "shop python v2" in page(host, "shop")
    assert host.sh("md5sum /etc/nginx/sites-available/shop.conf").stdout == before
    host.sh("rm /etc/nginx/conf.d/zz-by-hand.conf")
    host.siteops("deploy shop")
    assert "shop python v3" in page(host, "shop")


def test_postgresql_stopped_during_add_site_then_a_rerun_completes(host):
    host.sh("systemctl stop postgresql")
    try:
        line = error_line(host.siteops("add-site late --domain late.test --components frontend",
                                       check=False))
        assert "psql" in line or "PostgreSQL" in line or "postgres" in line, line
        assert "blog python" in page(host, "blog")
    finally:
        host.sh("systemctl start postgresql")
    host.siteops("add-site late --domain late.test --components frontend")
    audit = host.siteops("audit late", check=False)
    assert audit.returncode == 0, audit.stdout[-1500:]


def test_redis_unable_to_start_during_add_site_then_a_rerun_completes(host):
    # Each site has its own Redis, started by add-site: make it unable to start
    # (as a half-upgraded redis-server package would).
    host.sh("chmod a-x /usr/bin/redis-server")
    try:
        line = error_line(host.siteops("add-site cache --domain cache.test --components frontend",
                                       check=False))
        assert "cache-redis.service" in line, line
        assert "blog python" in page(host, "blog")
    finally:
        host.sh("chmod a+x /usr/bin/redis-server")
    host.siteops("add-site cache --domain cache.test --components frontend")
    # Stopped by hand later: add-site (or audit --fix) starts it again.
    host.sh("systemctl stop cache-redis")
    assert host.siteops("audit cache", check=False).returncode != 0
    host.siteops("add-site cache --domain cache.test --components frontend")
    url = host.sh("grep ^REDIS_URL= /srv/sites/cache/shared/.env").stdout.strip().split("=", 1)[1]
    password, port = url.split(":")[2].split("@")[0], url.rsplit(":", 1)[1].split("/")[0]
    assert host.sh(f"REDISCLI_AUTH={password} redis-cli -p {port} --no-auth-warning PING"
                   ).stdout.strip() == "PONG"
    audit = host.siteops("audit cache", check=False)
    assert audit.returncode == 0, audit.stdout[-1500:]


def test_the_disk_full_during_a_build_fails_cleanly_and_frees_its_space(host):
    host.siteops("add-site full --domain full.test --components frontend "
                 "--start frontend='/usr/bin/env SITE=full python3 app.py'")
    host.sh("mount -t tmpfs -o size=40M,mode=0750 tmpfs /srv/sites/full/releases && "
            "chown full:full /srv/sites/full/releases")
    try:
        commit(host, "/srv/repos/full", {"app.py": PYTHON_APP}, "small")
        host.siteops("deploy full --repo /srv/repos/full --min-free-mb 10")
        commit(host, "/srv/repos/full", {"siteops.toml": 'build = "head -c 80M /dev/zero > blob"\n'
                                                         '[frontend]\nstart = "python3 app.py"\n'},
               "big")
        line = error_line(host.siteops("deploy full --min-free-mb 10", check=False))
        assert line.startswith("deploy: error: build failed (exit 1): head -c 80M"), line
        assert "No space left on device" in host.siteops("deploy full --min-free-mb 10",
                                                         check=False).stderr
        assert "full python" in page(host, "full")
        used = host.sh("df --output=used -B1M /srv/sites/full/releases | tail -1").stdout
        assert int(used) < 20  # the failed release's files are gone
        commit(host, "/srv/repos/full", {"siteops.toml": None}, "small again")
        host.siteops("deploy full --min-free-mb 10")
        assert "full python" in page(host, "full")
    finally:
        host.sh("systemctl stop 'full-frontend@*' ; umount /srv/sites/full/releases", check=False)


def test_an_unreadable_registry_or_lock_is_one_clear_error(host):
    host.sh("cp -a /var/lib/siteops/registry.json /root/registry.json")
    host.sh("printf '{\"version\": 2, \"sites\": {' > /var/lib/siteops/registry.json")
    try:
        for command in ("sites list", "deploy shop", "add-site new --domain new.test"):
            line = error_line(host.siteops(command, check=False))
            assert "registry" in line and "/var/lib/siteops/registry.json" in line, line
        assert "shop python" in page(host, "shop")
    finally:
        host.sh("cp -a /root/registry.json /var/lib/siteops/registry.json")
    host.sh("rm -f /var/lib/siteops/locks/shop.lock && mkdir /var/lib/siteops/locks/shop.lock")
    try:
        line = error_line(host.siteops("deploy shop", check=False))
        assert "/var/lib/siteops/locks/shop.lock" in line, line
    finally:
        host.sh("rmdir /var/lib/siteops/locks/shop.lock")
    host.siteops("deploy shop")
    host.sh("nginx -t")
