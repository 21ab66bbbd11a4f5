"""What a site consists of, declared once. add-site makes these parts, audit
expects them, backup saves them, restore brings them back and remove-site
takes them away; each reads this module, so none can forget one.

    user       the Unix user and group NAME (users.py)
    tree       /srv/sites/NAME: releases, current, shared/ (layout.py)
    data       shared/.env, shared/uploads, shared/redis
    generated  rendered from the registry: the slice, the component and
               worker templates, Redis's unit, the live release's drop-ins
               and job units, the nginx site and its enabled link, the Redis
               config, the logrotate file
    root-only  the repository mirror, the deploy key pair, the certificate
               lineage and its renewal config
    state      the site's lock and its backup staging directory
    database   the PostgreSQL role and database NAME (postgres.py)
    firewall   its rules in the host's nftables ruleset (nftables.py)

backup saves data, generated and root-only files (and a dump of the
database); restore puts data and root-only files back and renders the
generated ones again from the registry (a site restored into another slot
gets them for its new ports); remove-site removes every part."""

from __future__ import annotations

from pathlib import Path

from . import systemd, units
from .model import Site
from .host import Host


def data(host: Host, name: str) -> list[Path]:
    """The site's own data: what only a backup can bring back."""
    p = host.paths.of(name)
    return [p.uploads, p.env, p.redis]


def generated(host: Host, site: Site) -> list[Path]:
    """Every file siteops renders from the registry for the site: its units,
    the live release's drop-ins and job units, nginx, Redis and logrotate."""
    name, paths = site.name, host.paths
    return [*(paths.unit(u) for u in units.template_units(site)),
            *(paths.dropin(u) for u in units.live_instances(site, held=False)),
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


def state(host: Host, name: str) -> list[Path]:
    """The site's lock and backup staging directory."""
    return [host.paths.site_lock(name), host.paths.staging(name)]


def missing(host: Host, site: Site) -> list[Path]:
    """The generated parts the site should have and lacks (add-site's and
    audit's check that every declared part is there)."""
    return [p for p in generated(host, site) if not (p.exists() or p.is_symlink())]


def present(paths: list[Path]) -> list[Path]:
    """Those of paths that exist (a link counts, even a dangling one)."""
    return [p for p in paths if p.exists() or p.is_symlink()]
