"""Restoring sites from backups: one site's data in place, a site this host
lacks recreated from its snapshot (restore, and move-site's target), every
site of a host onto a new one (disaster recovery)."""

from __future__ import annotations

import json
from pathlib import Path

from .. import (access, backup, envfile, instances, model, network, parts, postgres, redis,
                registry, units)
from ..errors import SiteopsError
from ..journal import now
from ..model import Site
from ..host import Host
from . import deploy as deploy_op
from . import sites as sites_op

Source = tuple[str | None, Path | None]  # a repository to read from, and its password file


def require_repository(host: Host) -> None:
    """The repository must already exist and open: restore never makes one."""
    problem = backup.problem(host)
    if problem:
        raise SiteopsError(f"backup repository {backup.settings(host)['RESTIC_REPOSITORY']} "
                           f"cannot be opened: {problem}. If this is a new server, copy the "
                           f"repository's password there ({backup.password_path(host)}, 0600) "
                           "and set the repository with backup --repository first")


def restore_data(host: Host, site: Site, target) -> None:
    """The extracted snapshot's .env, database, uploads and Redis in place. The
    .env's DATABASE_URL and REDIS_URL are pointed at the site's own services as
    the registry has them here (its slot may not be the one it was backed up in)."""
    name, paths = site.name, host.paths.of(site.name)

    def saved(path):
        return backup.inside(target, path)

    saved_env = saved(paths.env).read_text()
    env_text = envfile.merge(saved_env, site, postgres.clusters(host)[0].port)
    with host.step(f"{paths.env} of {name}"):
        host.write(paths.env, env_text, 0o600, name, name)
    before, after = envfile.parse(saved_env), envfile.parse(env_text)
    moved = [k for k in ("DATABASE_URL", "REDIS_URL") if before.get(k) != after.get(k)]
    if moved:
        host.say(f"{'':13}{', '.join(moved)} now point(s) at {name}'s own services here "
                 f"(slot {site.slot}; the snapshot's pointed elsewhere)")
    db_password, redis_password = envfile.passwords(env_text)
    postgres.ensure_site_database(host, name, db_password)  # the role's password is .env's
    with host.step(f"database {site.database}"):
        backup.restore_database(host, site, saved(host.paths.staging(name) / "database.dump"))
    postgres.ensure_site_database(host, name, db_password)  # grants on the restored one
    with host.step(f"{paths.uploads}"):
        backup.replace_dir_as_user(host, saved(paths.uploads), paths.uploads, name, 0o750)
    unit = units.redis_unit(name)
    with host.step(f"redis of {name}"):
        host.run(["systemctl", "stop", unit])
        backup.replace_dir_as_user(host, saved(paths.redis), paths.redis, name, 0o700)
        redis.ensure_site_conf(host, site, redis_password)
        host.run(["systemctl", "start", unit])


def restore_config(host: Host, site: Site, target) -> None:
    """Root-only files of a recreated site: mirror, deploy key, certificate."""
    name = site.name
    with host.step(f"mirror, deploy key and certificate of {name}"):
        for path in parts.files(host, site, "root-only"):
            saved = backup.inside(target, path)
            if saved.exists() or saved.is_symlink():
                host.remove_tree(path)
                if not path.parent.exists():
                    host.ensure_dir(path.parent, 0o700)
                host.run(["cp", "-a", "--", saved, path])


def recreate(host: Host, saved: Site, held: bool = False) -> Site:
    """A site this host lacks, made from the snapshot's registry entry (its
    releases and any move in progress left behind; held: its workers and
    timers not run), in its old slot if that is free here, else in the first
    free one; returns the new entry."""
    with registry.locked(host, f"restore {saved.name}") as data:
        if saved.name in data.sites:
            return data.sites[saved.name]
        listening = network.unavailable_ports(host)
        free = saved.slot not in {s.slot for s in data.sites.values()} \
            and not listening.intersection(units.block_ports(saved.slot))
        slot = saved.slot if free else registry.allocate_slot(data, listening)
        if slot != saved.slot:
            ports = units.ports_for(slot, saved.components).values()
            host.say(f"{'':13}slot {saved.slot} of {saved.name} is taken here: it gets slot "
                     f"{slot} (ports {', '.join(map(str, ports))})")
        # A move's copy (held) serves its app for the move's health checks: the
        # operator's maintenance, if any, is turned on there at the forward stage.
        site = saved.copy(slot=slot, uid=None, state=model.PROVISIONING, live=None,
                          releases={}, history=[], created=now(), updated=now(), move=None,
                          forwarded_by=[], held=held,
                          maintenance=None if held else saved.maintenance)
        site.ports = units.ports_for(slot, site.components)
        data.sites[site.name] = site
        registry.save(host, data)
        db_port = postgres.clusters(host)[0].port
        sites_op.provision(host, site, db_port, list(data.sites.values()))
        site.state = model.READY
        registry.save(host, data)
        access.write(host, list(data.sites.values()))  # its tenants' keys come back with it
        return site


def restore_one(host: Host, name: str, snapshot: dict, source: Source = (None, None),
                held: bool = False) -> None:
    """Restore one site from snapshot (of source's repository, else the
    host's own), recreating it first if this host lacks it (then deploying the
    commit that was live, from the restored mirror; held: its workers and
    timers not run)."""
    target = host.paths.state / "restore" / name
    with backup.reading(*source):
        backup.extract(host, snapshot["id"], target)
    try:
        saved = model.site_from_json(json.loads(
            backup.inside(target, host.paths.staging(name) / "site.json").read_text()))
        data = registry.load(host)
        recreated = name not in data.sites
        if recreated:  # its certificate first: nginx's config is made with it
            sites_op.refuse_conflicts(host, data, name, saved.domains)
            restore_config(host, saved, target)
            recreate(host, saved, held)
        with registry.site_locked(host, name, f"restore {name}") as site:
            if not recreated:
                sid = backup.backup_site(host, site, tags=(backup.SAFETY_TAG,))
                host.say(f"{'':13}safety snapshot {sid} of what is replaced")
            restore_data(host, site, target)
    finally:
        host.remove_tree(target)
    live = saved.live and saved.releases.get(saved.live.release)
    if recreated and live and live.commit:
        deploy_op.deploy(host, name, live.commit, fetch=False)
    elif not recreated:
        instances.refresh(host, registry.get_site(registry.load(host), name), [], force=True)


def plan_all(host: Host) -> backup.Recovery:
    """The sites the host had at its last backup; says which it recreates,
    which it restores in place and which removed ones it leaves out."""
    plan = backup.recovery(host)
    here = registry.load(host).sites
    state = plan.host_snapshot
    host.say(f"restore --all: the sites of the host's state of "
             f"{state['time'][:19].replace('T', ' ')} (snapshot {state['short_id']}), and "
             "those backed up after it")
    for label, names in (("recreate", [n for n in plan.sites if n not in here]),
                         ("in place", [n for n in plan.sites if n in here]),
                         ("left out", plan.removed)):
        if names:
            why = " (removed from the host; `restore NAME --yes` brings one back)" \
                if label == "left out" else ""
            host.say(f"{label:<13}{', '.join(names)}{why}")
    if plan.missing:
        host.say(f"{'no backup':<13}{', '.join(plan.missing)} (never backed up: cannot be "
                 "restored)")
    return plan


def restore(host: Host, names: list[str], snapshot_id: str | None = None) -> None:
    """Each named site from its newest snapshot (or snapshot_id, one site
    only); names empty: every site of the host's last full backup (plan_all)."""
    require_repository(host)
    plan = plan_all(host) if not names else None
    names = plan.sites if plan else names
    for name in names:
        snapshot = backup.find_snapshot(host, name, snapshot_id)
        host.say(f"restore {name} from snapshot {snapshot['short_id']} of "
                 f"{snapshot['time'][:19].replace('T', ' ')}")
        if host.dry_run:  # what a snapshot holds is known only once extracted
            host.say(f"{'':13}(dry run: the snapshot is not extracted, so its steps are not "
                     "listed)")
            continue
        restore_one(host, name, snapshot)
    host.say(f"{'would restore' if host.dry_run else 'restored'} {len(names)} site(s)")
    if plan and plan.missing:
        raise SiteopsError(f"{', '.join(plan.missing)} had no backup and could not be restored "
                           "(the other sites were)")
