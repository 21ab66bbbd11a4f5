"""remove-site: take a site off the host, after a final backup."""

from __future__ import annotations

import argparse
import sys

from .. import (access, backup, cli, fail2ban, logrotate, nftables, nginx, parts, postgres, registry,
                systemd, tls, users, validate)
from ..errors import UsageError
from ..journal import now
from ..model import Site
from ..host import Host

REMOVING = "removing"

DESCRIPTION = """\
Remove site NAME from this host. First a final backup (tagged removed; skip
it with --no-backup), then, in this order: its nginx site (nginx -t, reload:
its domains get the default server's refusal, other sites keep serving), its
units and slice (every process stopped), its certificate and renewal, its
logrotate file, its Redis config, its database and role, its tree
/srv/sites/NAME, its user and group, its repository mirror, deploy key and
lock, and its registry entry: the slot and ports become free. Its backups are
kept, and a fresh snapshot of the host's state (when the repository can be
read) records that the site is gone, so `restore --all` leaves it out.

--keep-data keeps the database (its role can no longer log in), the tree,
and the user and group that own them (so their files never pass to a later
user given the same id); `remove-site NAME --yes` later removes them too.

Interrupted anywhere, run it again: it finishes the removal (the entry says
"removing" until the end). Refuses without --yes, unless the site's name is
typed at the prompt.
"""

EPILOG = """\
examples:
  sudo remove-site shop --yes
  sudo remove-site shop --keep-data --yes
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("remove-site", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site to remove")
    p.add_argument("--yes", action="store_true", help="remove it without asking")
    p.add_argument("--no-backup", action="store_true", help="skip the final backup")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the database, the tree and the user that owns them")
    return p


def leftovers(host: Host, name: str) -> list[str]:
    """What of a site not in the registry is still on the host."""
    site = Site(name=name, slot=-1)
    found = [str(p) for p in parts.present([host.paths.site(name), *parts.generated(host, site),
                                            *parts.root_only(host, site)])]
    found += [str(p) for p in systemd.site_unit_files(host, name) if p.exists()]
    account = users.lookup(host, name)
    if account is not None and account.comment == users.site_comment(name):
        found.append(f"user {name}")
    return found


def confirm(name: str) -> None:
    if sys.stdin.isatty():
        typed = input(f"remove site {name} and its data (a final backup is kept)? "
                      "type its name: ").strip()
        if typed == name:
            return
    raise UsageError(f"not removing site {name}: pass --yes (or type its name at the "
                     "prompt); nothing was changed")


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
        for path in parts.present([*parts.root_only(host, site), *parts.state(host, name)]):
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


def run(host: Host, args: argparse.Namespace) -> None:
    name = args.name
    data = registry.load(host)
    site = data.sites.get(name)
    if site is None:
        found = leftovers(host, name)
        if not found:
            raise UsageError(f"no site {name!r} in the registry and nothing of it on this host")
        host.say(f"site {name} is not in the registry; removing what is left of it: "
                 + ", ".join(found))
        site = Site(name=name, slot=-1)
    if not args.yes and not host.dry_run:
        confirm(name)
    if site.slot >= 0 and site.state != REMOVING:
        if not args.no_backup:
            backup.ensure_repository(host)
            sid = backup.backup_site(host, site, tags=(backup.REMOVED_TAG,))
            host.say(f"{'':13}final snapshot {sid} of {name} (restore: restore {name} "
                     f"--snapshot {sid} --yes, after add-site)")
        with registry.site_locked(host, name, f"remove-site {name}"):
            mark_removing(host, name)
    remove(host, site, args.keep_data)
    with registry.locked(host, f"remove-site {name}") as data:
        others = [s for s in data.sites.values() if s.name != name]
        with host.step("loopback port ownership (nftables)"):
            nftables.ensure(host, others)
        if name in data.sites:
            del data.sites[name]
            registry.save(host, data)
        with host.step(f"tenant keys of {name} removed"):
            access.write(host, others)
    with host.step("fail2ban forgets the site's log"):
        fail2ban.reload(host)
    record_host_state(host, name)
    host.say(f"site {name} removed at {now()}" + (" (data kept)" if args.keep_data else ""))


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("remove-site", build_parser(), run, argv, host)
