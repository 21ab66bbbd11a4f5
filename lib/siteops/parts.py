"""What a site consists of, declared once (PARTS). add-site makes these
parts, audit expects them, backup saves them, restore brings them back and
remove-site takes them away; each picks its files from this module by part,
so none can forget one, and the parts that are not files say here which
module makes and removes them.

backup saves data, generated and root-only files (and a dump of the
database); restore puts data and root-only files back and renders the
generated ones again from the registry (a site restored into another slot
gets them for its new ports); remove-site removes every part."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import systemd, units
from .model import Site
from .host import Host


@dataclass(frozen=True)
class Part:
    """One part of a site: its files (None: not files, then `module` makes,
    checks and removes it), how a backup keeps it and how a restore brings it
    back."""
    name: str
    what: str
    files: Callable[[Host, Site], list[Path]] | None
    module: str
    backup: str
    restore: str


def tree(host: Host, site: Site) -> list[Path]:
    """The site's directory: releases, current, shared/ (layout.py owns its modes)."""
    return [host.paths.site(site.name)]


def data(host: Host, site: Site) -> list[Path]:
    """The site's own data: what only a backup can bring back."""
    p = host.paths.of(site.name)
    return [p.uploads, p.env, p.redis]


def generated(host: Host, site: Site) -> list[Path]:
    """Every file siteops renders from the registry for the site: its units,
    the live release's drop-ins and job units, nginx, Redis and logrotate."""
    name, paths = site.name, host.paths
    return [*(paths.unit(u) for u in units.template_units(site)),
            *(paths.dropin(u) for u in units.live_instances(site, held=False)
              + units.live_door_units(site)),
            *(paths.unit(u) for job in sorted(systemd.live_jobs(site))
              for u in units.job_units(name, job)),
            paths.nginx_site(name), paths.nginx_enabled(name), paths.redis_conf(name),
            paths.logrotate(name)]


def root_only(host: Host, site: Site) -> list[Path]:
    """Root's files for the site that only a backup brings back: the mirror,
    the deploy key pair, the certificate lineage and its renewal config."""
    name, paths = site.name, host.paths
    return [paths.mirror(name), paths.deploy_key(name), paths.deploy_key(name).with_suffix(".pub"),
            *paths.certificate(name)]


def state(host: Host, site: Site) -> list[Path]:
    """The site's lock and backup staging directory."""
    return [host.paths.site_lock(site.name), host.paths.staging(site.name)]


PARTS = (
    Part("user", "the Unix user and group NAME (nologin)", None, "users",
         "its entry (uid)", "made again"),
    Part("tree", "/srv/sites/NAME: releases, current, shared/", tree, "layout",
         "-", "made again"),
    Part("data", "shared/.env, shared/uploads, shared/redis", data, "layout",
         "copied", "put back (.env's URLs pointed at the site's services here)"),
    Part("generated", "rendered from the registry: the slice, the component and worker "
         "templates, Redis's unit, the live release's drop-ins and job units, the nginx "
         "site and its enabled link, the Redis config, the logrotate file", generated,
         "systemd, nginx, redis, logrotate", "copied (for reading)", "rendered again"),
    Part("root-only", "the repository mirror, the deploy key pair, the certificate lineage "
         "and its renewal config", root_only, "git, tls", "copied", "copied back"),
    Part("state", "the site's lock and its backup staging directory", state, "registry, backup",
         "-", "made again"),
    Part("database", "the PostgreSQL role and database NAME", None, "postgres",
         "dumped (pg_dump)", "loaded into a new database that takes the old one's place"),
    Part("redis", "its own redis-server: unit NAME-redis on its port, ACL user", None, "redis",
         "its data directory (data)", "restarted on the data put back"),
    Part("firewall", "its ports' rules in the host's nftables ruleset", None, "nftables",
         "its entry (slot)", "rendered again"),
)
BY_NAME = {p.name: p for p in PARTS}


def files(host: Host, site: Site, *names: str) -> list[Path]:
    """The paths of the named parts, in that order."""
    out: list[Path] = []
    for name in names:
        declared = BY_NAME[name].files
        assert declared is not None, f"part {name} is not files"
        out += declared(host, site)
    return out


def missing(host: Host, site: Site) -> list[Path]:
    """The generated parts the site should have and lacks (add-site's and
    audit's check that every declared part is there)."""
    return [p for p in files(host, site, "generated") if not (p.exists() or p.is_symlink())]


def present(paths: list[Path]) -> list[Path]:
    """Those of paths that exist (a link counts, even a dangling one)."""
    return [p for p in paths if p.exists() or p.is_symlink()]
