"""The operations on a site as a whole: adding it and provisioning it
(add-site, and restore recreating one), putting it on HTTPS (tls, add-site
--tls) and removing it (remove-site, move-site's finish and the target's
clean-up of a half-made copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .. import (access, backup, distro, drains, envfile, fail2ban, instances, layout, logrotate, model,
                network, nftables, nginx, parts, postgres, redis, registry, systemd, tls, units,
                users, validate)
from ..errors import SiteopsError, UsageError
from ..journal import now
from ..model import READY, Site, Tls
from ..host import Host

REMOVING = "removing"


class Keep:
    """An existing site's setting, kept (add_site's sleep_after default)."""


KEEP = Keep()


def check_bootstrapped(host: Host) -> None:
    if not (host.paths.nginx / "snippets" / "siteops-realip.conf").exists():
        raise SiteopsError("this server has not been bootstrapped: run `sudo ./bin/bootstrap` first")


def refuse_conflicts(host: Host, data: registry.Registry, name: str, domains: list[str]) -> None:
    """A site NAME with these domains may be made here: no other site serves one
    of them, and a new site's name is no existing Unix user or group."""
    for other in data.sites.values():
        if other.name != name:
            taken = sorted(set(domains) & set(other.domains))
            if taken:
                raise UsageError(f"domain {taken[0]} already belongs to site {other.name}")
    if name not in data.sites:
        if users.lookup(host, name) is not None:
            raise UsageError(f"a Unix user {name!r} already exists; choose another site name")
        if users.group_exists(host, name):
            raise UsageError(f"a Unix group {name!r} already exists (a site's user would join "
                             "it); choose another site name")


def add_site(host: Host, name: str, domains: list[str], *,
             components: list[str] | None = None, starts: Sequence[tuple[str, str]] = (),
             https: bool = False, tls_asked: TlsAsked | None = None,
             sleep_after: int | None | Keep = KEEP) -> Site:
    """Make the site, or converge an existing one onto these domains (and
    components and start commands, when given); https: put it on HTTPS (a
    site already on HTTPS stays there), with tls_asked over its settings;
    sleep_after: seconds without a request before it sleeps, None never, KEEP
    an existing one's setting (a new site's: the host's default, never unless
    bootstrap --sleep-after says otherwise). Returns its entry."""
    distro.detect(host)
    check_bootstrapped(host)
    with registry.locked(host, f"add-site {name}") as data:
        new = name not in data.sites
        site = plan_entry(host, data, name, domains, components, starts)
        if not isinstance(sleep_after, Keep):
            site.sleep_after = sleep_after
        elif new:
            site.sleep_after = sleep_default(host)
        if site != data.sites.get(name):
            site.updated = now()
        data.sites[name] = site
        registry.save(host, data)  # a crash from here on leaves state "provisioning"
        host.say(f"site {name}: slot {site.slot}, ports "
                 + ", ".join(f"{k} {v}" for k, v in site.ports.items()))
        db_port = postgres.clusters(host)[0].port
        changed = provision(host, site, db_port, list(data.sites.values()))
        if site.state != READY:
            site.state = READY
            site.updated = now()
        registry.save(host, data)
    site = instances.refresh(host, site, changed)  # after the registry lock: it takes it itself
    if site.live and site.live.doors != (site.sleep_after is not None):
        with registry.site_locked(host, name, f"add-site {name}") as site:
            site = instances.restart(host, site, "sleeping turned "
                                     + ("on" if site.sleep_after is not None else "off"))
            ensure_running(host, site)
    if https or site.tls:
        with registry.site_locked(host, name, f"tls {name}"):
            site = enable_tls(host, name, tls_asked or TlsAsked())
    return site


def plan_entry(host: Host, data: registry.Registry, name: str, domains: list[str],
               components: list[str] | None, starts: Sequence[tuple[str, str]]) -> Site:
    """The registry entry the site should have: the existing one updated (a copy),
    or a new one in the first free slot."""
    refuse_conflicts(host, data, name, domains)
    site = data.sites.get(name)
    if site is None:
        slot = registry.allocate_slot(data, network.unavailable_ports(host))
        site = Site(name=name, slot=slot, created=now())
    site = site.copy(domains=domains)
    if components:
        site.components, site.components_chosen = components, True
    site.commands = {c: site.commands.get(c, model.DEFAULT_COMMANDS[c])
                     for c in site.components}
    for component, command in starts:
        if component not in site.components:
            raise UsageError(f"--start {component}=...: the site has no {component} component")
        site.commands[component] = command
    site.ports = units.ports_for(site.slot, site.components)
    return site


@dataclass(frozen=True)
class TlsAsked:
    """The TLS settings a command line asks for; None keeps the site's own."""
    email: str | None = None
    hsts: bool | None = None
    staging: bool | None = None
    server: str | None = None
    ca_bundle: str | None = None


def tls_settings(current: Tls | None, asked: TlsAsked) -> Tls:
    """The site's TLS settings: what was asked over what it had."""
    t = current or Tls()
    return Tls(email=asked.email or t.email,
               hsts=t.hsts if asked.hsts is None else asked.hsts,
               staging=t.staging if asked.staging is None else asked.staging,
               server=asked.server or t.server,
               ca_bundle=asked.ca_bundle or t.ca_bundle)


def enable_tls(host: Host, name: str, asked: TlsAsked) -> Site:
    """Record the site's TLS settings, issue its certificate if it has none
    for exactly its domains, then serve HTTPS. Returns the entry. The caller
    holds the site's lock."""
    def change(entry: Site) -> None:
        if entry.state != READY:
            raise UsageError(f"site {name} is not ready: run add-site {name} ... first")
        entry.tls = tls_settings(entry.tls, asked)
    site = registry.update_site(host, name, f"tls {name}", change)
    # A certificate issued (or re-issued under the same file names) leaves a
    # reload pending, which ensure_site carries out even if the file is unchanged.
    tls.issue(host, site)
    nginx.ensure_site(host, site)
    return site


def provision(host: Host, site: Site, db_port: int, sites: list[Site]) -> list[str]:
    """Converge every resource of the site, in dependency order; return the
    units whose files changed. sites: every registry entry, this one included."""
    name = site.name
    with host.step(f"user {name}"):
        users.ensure_site_user(host, name, host.paths.site(name))
    account = users.lookup(host, name)
    if account is not None:  # None only in a dry run of a new site
        site.uid = account.uid
    with host.step("loopback port ownership (nftables)"):
        nftables.ensure(host, sites)
    layout.ensure_tree(host, name)
    env_path = host.paths.of(name).env
    with host.step(f"{env_path} (secrets kept)"):
        env_text = envfile.merge(host.read(env_path), site, db_port)
        host.write(env_path, env_text, 0o600, name, name)
    db_password, redis_password = envfile.passwords(env_text)
    postgres.ensure_site_database(host, name, db_password)
    with host.step(f"redis config {name}"):
        redis_changed = redis.ensure_site_conf(host, site, redis_password)
    with host.step(f"systemd units of {name}"):
        changed = systemd.ensure_units(host, site, redis_config_changed=redis_changed)
    ensure_running(host, site)
    reloaded = nginx.ensure_site(host, site)
    logrotate.ensure_site(host, site)
    drains.ensure(host, sites)  # a restored or moved site's drains
    if reloaded:  # its nginx file changed: a new error log, maybe
        with host.step("fail2ban watches the site's nginx error log"):
            fail2ban.watch(host, host.paths.of(name).nginx_error_log)
    # Every part parts.py declares that add-site makes (a release's drop-ins and
    # job units are deploy's), made: else a bug, said plainly.
    gone = [] if host.dry_run else parts.missing(host, site.copy(live=None))
    if gone:
        raise SiteopsError(f"site {name} lacks {', '.join(map(str, gone))} after provisioning")
    return changed


def ensure_running(host: Host, site: Site) -> None:
    """What runs at all times runs, and is started at boot: Redis and, once
    deployed, the live release; for a site that sleeps, only the live
    release's doors (Redis then runs only while something needs it)."""
    running = units.always_on(site)
    for unit in running:
        with host.step(f"{unit} running"):
            systemd.ensure_started(host, unit)
    redis_unit = units.redis_unit(site.name)
    if redis_unit not in running and systemd.is_enabled(host, redis_unit):
        with host.step(f"{redis_unit} started only when needed (the site sleeps)"):
            # With a reload: the manager must forget that boot wants it.
            host.run(["systemctl", "disable", "--quiet", *([] if site.live else ["--now"]),
                      redis_unit])


def sleep_default(host: Host) -> int | None:
    """The host's default sleep time for new sites (bootstrap --sleep-after)."""
    text = (host.read(host.paths.sleep_default) or "never").strip()
    try:
        return validate.sleep_after(text)
    except validate.InvalidInput:
        raise SiteopsError(f"{host.paths.sleep_default} holds {text!r}: set it again with "
                           "bootstrap --sleep-after") from None


def set_sleep(host: Host, name: str, seconds: int | None) -> Site:
    """Make the site sleep after seconds without a request (None: never): its
    units rendered for it, and its live release moved behind doors (or out
    from behind them) by the switch a deploy uses, with no dropped request."""
    with registry.site_locked(host, name, f"limits {name}"):
        site = registry.update_site(host, name, f"limits {name}",
                                    lambda entry: setattr(entry, "sleep_after", seconds))
        with host.step(f"{name} sleeps after {validate.duration(seconds)} without a request"):
            systemd.ensure_units(host, site)
        if site.live and site.live.doors != (seconds is not None):
            site = instances.restart(host, site, "sleeping turned "
                                     + ("on" if seconds is not None else "off"))
        elif site.live:  # what a stopped run left (the doors it switched from)
            site = instances.recover(host, site)
        ensure_running(host, site)
    return site


def leftovers(host: Host, name: str) -> list[str]:
    """What of a site not in the registry is still on the host."""
    site = Site(name=name, slot=-1)
    found = [str(p) for p in parts.present(parts.files(host, site, "tree", "generated",
                                                        "root-only"))]
    found += [str(p) for p in systemd.site_unit_files(host, name) if p.exists()]
    account = users.lookup(host, name)
    if account is not None and account.comment == users.site_comment(name):
        found.append(f"user {name}")
    return found


def mark_removing(host: Host, name: str) -> None:
    def mark(entry: Site) -> None:
        entry.state = REMOVING
    registry.update_site(host, name, f"remove-site {name}", mark)


def remove(host: Host, site: Site, keep_data: bool) -> None:
    """Every resource of the site, outermost first (traffic, then processes,
    then data)."""
    name = site.name
    nginx.remove_site(host, name)
    systemd.remove_site_units(host, name)
    with host.step(f"certificate of {name} removed"):
        if tls.lineage(host, site).exists() or tls.renewal_conf(host, site).exists():
            host.run(["certbot", "delete", "--non-interactive", "--cert-name", name])
    logrotate.remove_site(host, name)
    with host.step(f"redis config of {name} removed"):
        host.remove(host.paths.redis_conf(name))
    if keep_data:
        postgres.disable_site_role(host, name)
    else:
        postgres.drop_site_database(host, name)
        with host.step(f"{host.paths.site(name)} removed"):
            host.remove_tree(host.paths.site(name))
        users.remove_site_user(host, name)
    with host.step(f"mirror, deploy key and lock of {name} removed"):
        for path in parts.present(parts.files(host, site, "root-only", "state")):
            if path.is_dir() and not path.is_symlink():
                host.remove_tree(path)
            else:
                host.remove(path)


def record_host_state(host: Host, name: str) -> None:
    """A fresh snapshot of the host's state (the registry without the site), so a
    disaster recovery (restore --all) leaves the site out even when its final
    backup was skipped."""
    problem = backup.problem(host)
    if problem:
        host.say(f"{'':13}no host snapshot ({problem}): run `backup` before relying on "
                 f"`restore --all` to leave {name} out")
        return
    sid = backup.backup_host(host)
    host.say(f"{'':13}host snapshot {sid}: a restore --all leaves {name} out")


def remove_site(host: Host, name: str, *, keep_data: bool = False, final_backup: bool = True,
                confirm: Callable[[str], None] | None = None) -> None:
    """Take site name off the host: a final backup (unless final_backup is
    False), then every resource of it; what a removal that was stopped left is
    removed too. confirm(name) is asked first (it raises to refuse)."""
    data = registry.load(host)
    site = data.sites.get(name)
    if site is None:
        found = leftovers(host, name)
        if not found:
            raise UsageError(f"no site {name!r} in the registry and nothing of it on this host")
        host.say(f"site {name} is not in the registry; removing what is left of it: "
                 + ", ".join(found))
        site = Site(name=name, slot=-1)
    if confirm is not None:
        confirm(name)
    if site.slot >= 0 and site.state != REMOVING:
        if final_backup:
            backup.ensure_repository(host)
            sid = backup.backup_site(host, site, tags=(backup.REMOVED_TAG,))
            host.say(f"{'':13}final snapshot {sid} of {name} (restore: restore {name} "
                     f"--snapshot {sid} --yes, after add-site)")
        with registry.site_locked(host, name, f"remove-site {name}"):
            mark_removing(host, name)
    remove(host, site, keep_data)
    with registry.locked(host, f"remove-site {name}") as data:
        others = [s for s in data.sites.values() if s.name != name]
        with host.step("loopback port ownership (nftables)"):
            nftables.ensure(host, others)
        drains.ensure(host, others)
        if name in data.sites:
            del data.sites[name]
            registry.save(host, data)
        with host.step(f"tenant keys of {name} removed"):
            access.write(host, others)
    with host.step("fail2ban forgets the site's log"):
        fail2ban.reload(host)
    record_host_state(host, name)
    host.say(f"site {name} removed at {now()}" + (" (data kept)" if keep_data else ""))
