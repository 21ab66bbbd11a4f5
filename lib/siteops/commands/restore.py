"""restore: bring a site's data back from a backup, or every site onto a new host."""

from __future__ import annotations

import argparse
import json

from .. import (backup, cli, envfile, instances, model, network, postgres, redis, registry, systemd,
                tls, validate)
from . import add_site
from . import deploy as deploy_command
from ..errors import SiteopsError, UsageError
from ..journal import now
from ..model import Site
from ..system import Host

DESCRIPTION = """\
Put a site's data back as a snapshot holds it (default: its newest backup;
see `backup --list NAME`): its database, shared/uploads, shared/.env and
Redis. First a safety snapshot of what is replaced is taken (tagged
before-restore), so a restore can itself be undone with --snapshot ID; it is
never the default, so a restore run again after an interruption restores
what the first run meant to. The database is restored into a new one
that then takes the old one's place, so a dump that fails to load changes
nothing. The app then moves to fresh instances (health-gated), so it reads
the restored .env. Releases, nginx and units are not touched.

Disaster recovery, on a freshly bootstrapped host: set the repository
(`backup --repository ... --credentials ...`) and copy the repository's
password to /etc/siteops/restic-password (0600), then `restore --all --yes`
recreates every site of the repository that this host lacks (registry entry,
user, database, Redis, nginx, units, certificate, mirror, deploy key), puts
its data back and deploys the commit that was live, from the restored mirror.

Refuses without --yes.
"""

EPILOG = """\
examples:
  sudo restore shop --yes                     its newest snapshot
  sudo restore shop --snapshot 4f2a9c1e --yes
  sudo restore --all --yes                    every site, on a new host
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("restore", DESCRIPTION, EPILOG)
    p.add_argument("names", nargs="*", type=validate.site_name, metavar="NAME",
                   help="the site(s) to restore")
    p.add_argument("--all", action="store_true",
                   help="every site the repository has a snapshot of")
    p.add_argument("--snapshot", type=snapshot_id, metavar="ID",
                   help="the snapshot (an id or its first 8 characters; one NAME only)")
    p.add_argument("--yes", action="store_true", help="really replace the site's data")
    return p


def snapshot_id(value: str) -> str:
    if not (8 <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value)):
        raise validate.InvalidInput(f"invalid --snapshot {value!r}: a snapshot id "
                                    "(8 to 64 hex digits)")
    return value


def require_repository(host: Host) -> None:
    """The repository must already exist and open: restore never makes one."""
    problem = backup.problem(host)
    if problem:
        raise SiteopsError(f"backup repository {backup.settings(host)['RESTIC_REPOSITORY']} "
                           f"cannot be opened: {problem}. If this is a new server, copy the "
                           f"repository's password there ({backup.password_path(host)}, 0600) "
                           "and set the repository with backup --repository first")


def restore_data(host: Host, site: Site, target) -> None:
    """The extracted snapshot's .env, database, uploads and Redis in place."""
    name, paths = site.name, host.paths.of(site.name)

    def saved(path):
        return backup.inside(target, path)

    env_text = saved(paths.env).read_text()
    with host.step(f"{paths.env} of {name}"):
        host.write(paths.env, env_text, 0o600, name, name)
    db_password, redis_password = envfile.passwords(env_text)
    postgres.ensure_site_database(host, name, db_password)  # the role's password is .env's
    with host.step(f"database {site.database}"):
        backup.restore_database(host, site, saved(backup.staging(host, name) / "database.dump"))
    postgres.ensure_site_database(host, name, db_password)  # grants on the restored one
    with host.step(f"{paths.uploads}"):
        backup.replace_dir_as_user(host, saved(paths.uploads), paths.uploads, name, 0o750)
    unit = systemd.redis_unit(name)
    with host.step(f"redis of {name}"):
        host.run(["systemctl", "stop", unit])
        backup.replace_dir_as_user(host, saved(paths.redis), paths.redis, name, 0o700)
        redis.ensure_site_conf(host, site, redis_password)
        host.run(["systemctl", "start", unit])


def restore_config(host: Host, site: Site, target) -> None:
    """Root-only files of a recreated site: mirror, deploy key, certificate."""
    name, paths = site.name, host.paths
    wanted = [paths.mirror(name), paths.deploy_key(name),
              paths.deploy_key(name).with_suffix(".pub"), tls.renewal_conf(host, site),
              *(host.paths.p(f"/etc/letsencrypt/{d}/{name}") for d in ("live", "archive"))]
    with host.step(f"mirror, deploy key and certificate of {name}"):
        for path in wanted:
            saved = backup.inside(target, path)
            if saved.exists() or saved.is_symlink():
                host.remove_tree(path)
                if not path.parent.exists():
                    host.ensure_dir(path.parent, 0o700)
                host.run(["cp", "-a", "--", saved, path])


def recreate(host: Host, saved: Site) -> Site:
    """A site this host lacks, made from the snapshot's registry entry (its
    releases left behind); returns the new entry."""
    with registry.locked(host, f"restore {saved.name}") as data:
        if saved.name in data.sites:
            return data.sites[saved.name]
        busy = {s.slot for s in data.sites.values()}
        slot = saved.slot if saved.slot not in busy else \
            registry.allocate_slot(data, network.listening_ports(host))
        site = saved.copy(slot=slot, uid=None, state=model.PROVISIONING, live=None,
                          releases={}, history=[], created=now(), updated=now())
        site.ports = registry.ports_for(slot, site.components)
        data.sites[site.name] = site
        registry.save(host, data)
        db_port = postgres.clusters(host)[0].port
        add_site.provision(host, site, db_port, list(data.sites.values()))
        site.state = model.READY
        registry.save(host, data)
        return site


def restore_one(host: Host, name: str, snapshot: dict) -> None:
    """Restore one site from snapshot, recreating it first if this host lacks it
    (then deploying the commit that was live, from the restored mirror)."""
    target = host.paths.state / "restore" / name
    backup.extract(host, snapshot["id"], target)
    try:
        saved = model.site_from_json(json.loads(
            backup.inside(target, backup.staging(host, name) / "site.json").read_text()))
        recreated = name not in registry.load(host).sites
        if recreated:  # its certificate first: nginx's config is made with it
            restore_config(host, saved, target)
            recreate(host, saved)
        with registry.site_locked(host, name, f"restore {name}") as site:
            if not recreated:
                sid = backup.backup_site(host, site, tags=(backup.SAFETY_TAG,))
                host.say(f"{'':13}safety snapshot {sid} of what is replaced")
            restore_data(host, site, target)
    finally:
        host.remove_tree(target)
    live = saved.live and saved.releases.get(saved.live.release)
    if recreated and live and live.commit:
        deploy_command.run(host, deploy_command.build_parser().parse_args(
            [name, "--ref", live.commit, "--no-fetch"]))
    elif not recreated:
        instances.refresh(host, registry.get_site(registry.load(host), name), [], force=True)


def run(host: Host, args: argparse.Namespace) -> None:
    if args.all == bool(args.names):
        raise UsageError("name the site(s) to restore, or pass --all")
    if args.snapshot and len(args.names) != 1:
        raise UsageError("--snapshot needs exactly one NAME")
    if not args.yes:
        raise UsageError("restore replaces the site's database, uploads, .env and Redis: "
                         "pass --yes to go ahead (a safety snapshot is taken first); "
                         "nothing was changed")
    require_repository(host)
    if args.all:
        names = sorted({t[5:] for s in backup.snapshots(host) for t in s.get("tags") or []
                        if t.startswith("site:")})
    else:
        names = args.names
        data = registry.load(host)
        for name in names:
            registry.get_site(data, name)  # in place: the site must exist here
    for name in names:
        snapshot = backup.find_snapshot(host, name, args.snapshot)
        host.say(f"restore {name} from snapshot {snapshot['short_id']} of "
                 f"{snapshot['time'][:19].replace('T', ' ')}")
        restore_one(host, name, snapshot)
    host.say(f"restored {len(names)} site(s)")


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("restore", build_parser(), run, argv, host)
