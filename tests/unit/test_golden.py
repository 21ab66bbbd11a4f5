"""Golden renders of every generated file. Regenerate after an intended
change with UPDATE_GOLDEN=1 and review the diff."""

import os
import tempfile
from pathlib import Path

import pytest

from siteops import drains, fleetlogs, hardening, logrotate, nftables, nginx, php, sysctl, systemd, users
from siteops.model import Drain, Job, Limits, Live, Maintenance, Move, Release, Site, Tls
from siteops.paths import TEMPLATES, Paths
from siteops.host import Host
from siteops.templates import render

GOLDEN = Path(__file__).parent / "golden"
SITE = Site(name="shop", slot=2, domains=["shop.example.com", "www.shop.example.com"],
            components=["frontend", "api"],
            ports={"frontend": 3120, "api": 4020, "redis": 5020},
            commands={"frontend": "pnpm start", "api": "node dist/api.js"})
API_ONLY = SITE.copy(name="api1", components=["api"], ports={"api": 4030, "redis": 5030},
                     commands={"api": "pnpm run start:api"})
LOGS = Paths().of("shop")
CERTS = Path("/etc/letsencrypt/live/shop.example.com")
HOST = Host(paths=Paths())
NO_SERVER = Host(paths=Paths(Path(__file__).parent / "no-such-root"))  # reads find nothing
LIVE = SITE.copy(live=Live("20261125T201500Z", 1))
API_ONLY_LIVE = API_ONLY.copy(live=Live("20261125T201500Z", 0))


def renders():
    yield "nginx-site-placeholder.conf", nginx.site_config(SITE, (1, 22, 1), None, LOGS)
    yield "nginx-site-live.conf", nginx.site_config(LIVE, (1, 22, 1), None, LOGS)
    yield "nginx-site-live-tls-1.22.conf", nginx.site_config(LIVE.copy(tls=Tls(hsts=True)),
                                                             (1, 22, 1), CERTS, LOGS)
    yield "nginx-site-api-only-tls-1.26.conf", nginx.site_config(API_ONLY_LIVE, (1, 26, 3), CERTS, LOGS)
    down = LIVE.copy(maintenance=Maintenance("Back at <b>14:00</b>", 600), tls=Tls(hsts=True))
    yield "nginx-site-maintenance-tls-1.26.conf", nginx.site_config(down, (1, 26, 3), CERTS, LOGS)
    yield "nginx-maintenance.html", nginx.maintenance_page(down)
    moved = LIVE.copy(move=Move("big", "192.0.2.2", "forwarding"), tls=Tls())
    yield "nginx-site-forwarding-tls-1.26.conf", nginx.site_config(moved, (1, 26, 3), CERTS, LOGS)
    arrived = LIVE.copy(forwarded_by=["192.0.2.1"])
    yield "nginx-site-forwarded-by.conf", nginx.site_config(arrived, (1, 26, 3), None, LOGS)
    for version in ((1, 22, 1), (1, 26, 3)):
        for path, text in nginx.base_files(NO_SERVER, version).items():
            yield f"nginx-base-{'.'.join(map(str, version[:2]))}-{path.name}", text
    for unit, text in systemd.render_units(HOST, SITE).items():
        yield f"systemd-{unit}", text
    release = Path("/srv/sites/shop/releases/20261125T201500Z")
    yield "systemd-shop-frontend@3121.service.d-siteops-release.conf", systemd.render_dropin(
        "shop", release.name, release, "/usr/bin/node server.js ${PORT}",
        {"frontend": 3121, "api": 4021})
    yield "systemd-shop-worker@mail-1-1.service.d-siteops-release.conf", systemd.render_dropin(
        "shop", release.name, release, "/usr/bin/python3 worker.py", {"frontend": 3121, "api": 4021},
        log=LOGS.worker_log("mail"))
    for unit, text in systemd.render_job(HOST, SITE, "cleanup", Job(
            "*-*-* 03:00:00", "python3 cleanup.py"), release.name).items():
        yield f"systemd-{unit}", text
    # A site that sleeps when idle: its doors, Redis and instances stop when unneeded.
    sleepy = SITE.copy(name="nap", sleep_after=900, live=Live("20261125T201500Z", 1, True))
    for unit, text in systemd.render_units(HOST, sleepy).items():
        if "door" in unit or "redis" in unit:
            yield f"systemd-{unit}", text
    yield "systemd-nap-frontend@3121.service.d-siteops-release.conf", systemd.render_dropin(
        "nap", release.name, release, "/usr/bin/node server.js", {"frontend": 3121},
        sleeps=True)
    for path, text in systemd.render_door_dropins(HOST.paths, "nap", "nap-frontend@3121.service",
                                                  3129, ["nap-worker@mail-1-1.service"]).items():
        yield f"systemd-{path.parent.name}-{path.name}", text
    for unit, text in systemd.render_job(HOST, sleepy, "cleanup", Job(
            "*-*-* 03:00:00", "python3 cleanup.py"), release.name).items():
        if unit.endswith(".service"):
            yield f"systemd-{unit}", text
    yield "nginx-site-sleeps.conf", nginx.site_config(sleepy, (1, 26, 3), None, Paths().of("nap"))
    # A php site: its FPM instance on its port, nginx serving the release's web root.
    fpm = php.start_command("8.2", HOST.paths.php_fpm_conf, {"memory_limit": "96M",
                                                             "upload_max_filesize": "20M"},
                            Paths().of("wiki").php_sessions)
    wiki = SITE.copy(name="wiki", components=["frontend"], ports={"frontend": 3120, "redis": 5020},
                     live=Live("20261125T201500Z", 1), releases={"20261125T201500Z": Release(
                         "live", runtime="php", commands={"frontend": fpm}, web_root="public",
                         php={"memory_limit": "96M", "upload_max_filesize": "20M"})})
    yield "nginx-site-php.conf", nginx.site_config(wiki, (1, 26, 3), None, Paths().of("wiki"))
    yield "systemd-wiki-frontend@3121.service.d-siteops-release.conf", systemd.render_dropin(
        "wiki", release.name, release, fpm, {"frontend": 3121})
    yield "php-fpm.conf", render("php/fpm.conf")
    yield "redis-shop.conf", render("redis/site.conf", name="shop", port=5020, password="PASSWORD",
                                    dir="/srv/sites/shop/shared/redis", maxmemory="64mb")
    yield "logrotate-siteops-shop", logrotate.config(HOST, SITE)
    yield "logrotate-siteops", render("logrotate/siteops", log_dir="/var/log/siteops")
    yield "sudoers-limited", users.sudoers_text(Path("/opt/siteops/bin"), full=False)
    yield "sudoers-full", users.sudoers_text(Path("/opt/siteops/bin"), full=True)
    for job in systemd.TIMERS:
        for unit in systemd.timer_units(job):
            yield f"systemd-{unit}", render(f"systemd/{unit}", bin="/opt/siteops/bin")
    yield "systemd-apt-daily-upgrade-outdated.conf", render(
        "systemd/apt-daily-upgrade-outdated.conf", bin="/opt/siteops/bin")
    yield f"systemd-{nftables.UNIT}", render(f"systemd/{nftables.UNIT}",
                                             conf="/etc/siteops/nftables.conf")
    yield "nftables-siteops.nft", nftables.render_conf(
        [SITE.copy(uid=1003), API_ONLY.copy(slot=3, uid=1004), SITE.copy(name="new", slot=4)],
        33)
    yield "systemd-siteops-big.slice", systemd.render_units(HOST, SITE.copy(
        name="big", limits=Limits(memory_max="4G", cpu_weight=400)))["siteops-big.slice"]
    for name in ("postgres/siteops.conf", "postgres/pg_hba.conf", "ssh/sshd_siteops.conf",
                 "certbot/reload-nginx", "apt/20auto-upgrades"):
        yield name.replace("/", "-"), render(name)
    yield "fail2ban-jail.local", render("fail2ban/jail.local",
                                        site_error_logs=Paths().of("*").nginx_error_log)
    yield "sysctl-90-siteops.conf", sysctl.conf_text()
    # Log drains: one over TLS with its own CA, one with the system's CAs, one plain.
    drained = SITE.copy(drains=[Drain("syslog+tls://logs.example.com:6514", "PEM"),
                                Drain("syslog+tls://logs.papertrailapp.com:12345"),
                                Drain("syslog://10.0.0.5:514")])
    for path, text in drains.files(HOST, [drained], host_name="web1").items():
        yield f"rsyslog-{path.name}", text
    # The fleet's log host (fleetlogs.py): this host ships there and is it.
    with tempfile.TemporaryDirectory() as root:
        fleet_host = Host(paths=Paths(Path(root)))
        fleetlogs.save(fleet_host, fleetlogs.Shipping("big", "192.0.2.2"),
                       fleetlogs.Receiving("192.0.2.2", 6514, 30, "1G"))
        for path, text in drains.files(fleet_host, [SITE], host_name="web1").items():
            yield f"rsyslog-fleet-{path.name}", text.replace(root, "")
    for template in sorted(set(hardening.FILES.values())):
        yield template.replace("/", "-"), render(template, deploy_home="/home/deploy")


CASES = dict(renders())


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_matches_golden(name):
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(CASES[name])
    assert CASES[name] == path.read_text()


def test_every_template_is_covered():
    used = {p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*") if p.is_file()}
    used.discard("nginx/cloudflare-ips.txt")  # data, rendered into the real-IP snippet
    used.discard("nginx/placeholder.html")
    text = "".join(CASES.values())
    for name in sorted(used):
        # Each template leaves a recognisable first line in at least one golden file.
        first = next(l for l in (TEMPLATES / name).read_text().splitlines() if l.strip())
        first = first.split("$")[0].strip()
        assert first in text, name


def test_a_missing_key_is_an_error():
    with pytest.raises(KeyError):
        render("systemd/site.slice")


def test_no_golden_is_stale():
    assert {p.name for p in GOLDEN.iterdir()} == set(CASES)
