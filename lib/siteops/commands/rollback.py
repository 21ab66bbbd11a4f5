"""rollback: switch a site back to an earlier release, health-gated, no rebuild."""

from __future__ import annotations

import argparse

from .. import cli, instances, model, registry, releases, validate
from ..errors import SiteopsError, UsageError
from ..model import Site
from ..host import Host

DESCRIPTION = """\
Switch site NAME back to an earlier release that is still on disk, with the
same health-gated switch as deploy (start beside the live instance, health
check, nginx reload, `current` swap, drain) and no rebuild.

Without --to it goes to the newest good release older than the live one that
has not been rolled back from already: two rollbacks in a row go two releases
back and never bounce forward to the broken one.

Not rolled back: shared/.env, shared/uploads and the database. A rollback
never runs a release command and does not undo one: migrations that the
releases after the target ran stay applied. A release whose code needs
another schema than the one it ran with must be handled by hand (restore a
backup or migrate down) before or after the rollback. The target's workers
and scheduled jobs replace the live release's.

A release kept warm by `deploy --keep-warm` (the one before it, which is
where a rollback goes) still runs its web instances: the rollback
health-checks them and switches nginx to them, with no start and no wait
for a boot.
"""

EPILOG = """\
examples:
  sudo rollback shop --list
  sudo rollback shop
  sudo rollback shop --to 20261125T201500Z
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("rollback", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site to roll back")
    p.add_argument("--to", type=validate.release_id, metavar="RELEASE",
                   help="the release to go to (see --list; default: the previous good one)")
    p.add_argument("--keep-warm", action="store_true",
                   help="keep the web instances of the release it leaves running, out of "
                        "nginx, so that going back to it (--to) needs no start (their "
                        "memory, shown, stays in use until the next switch)")
    p.add_argument("--list", action="store_true",
                   help="list the site's releases with commit, time, result and which is live")
    return p


def listing(site: Site) -> list[str]:
    """One line per release, newest first; live and rollback target marked."""
    live, target = releases.live_id(site), releases.rollback_target(site)
    lines = [f"{'':2}{'RELEASE':<20} {'COMMIT':<12} {'FINISHED':<20} {'RESULT':<12} REF"]
    for rid in reversed(releases.ordered(site)):
        r = site.releases[rid]
        mark = "*" if rid == live else ("<" if rid == target else " ")
        result = r.result + (" (left)" if r.rolled_back else "")
        if r.error:
            result += f": {r.error}"
        lines.append(f"{mark} {rid:<20} {(r.commit or '-')[:12]:<12} "
                     f"{r.finished or r.started or '':<20} {result:<12} "
                     f"{r.ref} {r.subject or ''}".rstrip())
    lines.append("* live   < where `rollback` without --to goes   (left): rolled back from")
    return lines


def choose(site: Site, to: str | None) -> str:
    live = releases.live_id(site)
    if live is None:
        raise SiteopsError(f"site {site.name} has never been deployed; nothing to roll back")
    if to is None:
        target = releases.rollback_target(site)
        if target is None:
            raise SiteopsError(f"site {site.name} has no earlier good release on disk "
                               "(see rollback --list)")
        return target
    record = site.releases.get(to)
    if record is None:
        raise UsageError(f"site {site.name} has no release {to} (see rollback --list)")
    if record.result != model.OK:
        raise UsageError(f"release {to} {record.result}; only good releases can go live")
    if to == live:
        raise UsageError(f"release {to} is already live")
    return to


def run(host: Host, args: argparse.Namespace) -> None:
    name = args.name
    if args.list:
        for line in listing(registry.get_site(registry.load(host), name)):
            host.say(line)
        return
    with registry.site_locked(host, name, f"rollback {name}") as site:
        target = choose(site, args.to)
        live = releases.live_id(site)
        assert live is not None  # choose() refuses a site with nothing live
        if not host.paths.of(name).release(target).is_dir():
            raise SiteopsError(f"release {target} is missing from disk")
        host.say(f"rollback {name}: {live} -> {target}")
        site = instances.recover(host, site)
        record = site.releases[target]

        def went_live(entry: Site) -> None:
            entry.releases[live].rolled_back = True
            entry.releases[target].rolled_back = False
            releases.record_event(entry, "rollback", target, "ok", commit=record.commit,
                                  **{"from": live})
        try:
            instances.switch(host, site, target, record, went_live,
                             keep_warm=args.keep_warm)
        except BaseException as exc:
            if releases.live_id(registry.get_site(registry.load(host), name)) == target:
                raise  # stopped after its switch: it is live; the next run tidies up
            error = releases.error_text(exc)
            registry.update_site(host, name, f"rollback {name}: failed",
                                 lambda entry: releases.record_event(
                                     entry, "rollback", target, "failed", error=error,
                                     **{"from": live}))
            raise
        host.say(f"release {target} is live again")
        order = releases.ordered(site)
        migrated = [r for r in order[order.index(target) + 1:]
                    if site.releases[r].result == model.OK and site.releases[r].release_command]
        if migrated:
            host.say(f"note: the release commands of {', '.join(migrated)} (e.g. "
                     f"{site.releases[migrated[-1]].release_command!r}) are not undone: "
                     "database migrations they ran stay applied")


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("rollback", build_parser(), run, argv, host)
