"""restore: bring a site's data back from a backup, or every site onto a new host."""

from __future__ import annotations

import argparse

from .. import cli, validate
from ..errors import UsageError
from ..host import Host
from ..ops import restore as restore_op

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

A site this host lacks (removed here, or a new host) is recreated from its
snapshot: registry entry, user, database, Redis, nginx, units, certificate,
mirror, deploy key; then its data is put back and the commit that was live
is deployed from the restored mirror. It keeps its slot when that is free
here, else it gets the first free one; either way its .env's DATABASE_URL
and REDIS_URL are pointed at its own services here (passwords kept), never
at ports another site now owns.

Disaster recovery, on a freshly bootstrapped host: set the repository
(`backup --repository ... --credentials ...`) and copy the repository's
password to /etc/siteops/restic-password (0600), then `restore --all --yes`
brings back the sites the host had at its last full backup (the registry in
its newest host snapshot), and any site backed up after that, each from its
newest snapshot. A site removed with remove-site is left out (the plan says
so); name it to bring it back: `restore NAME --yes`.

Refuses without --yes.
"""

EPILOG = """\
examples:
  sudo restore shop --yes                     its newest snapshot
  sudo restore shop --snapshot 4f2a9c1e --yes
  sudo restore --all --yes                    every site, on a new host
  sudo restore blog --yes                     a removed site, recreated
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("restore", DESCRIPTION, EPILOG)
    p.add_argument("names", nargs="*", type=validate.site_name, metavar="NAME",
                   help="the site(s) to restore")
    p.add_argument("--all", action="store_true",
                   help="every site the host had at its last full backup (removed ones "
                        "left out)")
    p.add_argument("--snapshot", type=snapshot_id, metavar="ID",
                   help="the snapshot (an id or its first 8 characters; one NAME only)")
    p.add_argument("--yes", action="store_true", help="really replace the site's data")
    return p


def snapshot_id(value: str) -> str:
    if not (8 <= len(value) <= 64 and all(c in "0123456789abcdef" for c in value)):
        raise validate.InvalidInput(f"invalid --snapshot {value!r}: a snapshot id "
                                    "(8 to 64 hex digits)")
    return value


def run(host: Host, args: argparse.Namespace) -> None:
    if args.all == bool(args.names):
        raise UsageError("name the site(s) to restore, or pass --all")
    if args.snapshot and len(args.names) != 1:
        raise UsageError("--snapshot needs exactly one NAME")
    if not args.yes:
        raise UsageError("restore replaces the site's database, uploads, .env and Redis: "
                         "pass --yes to go ahead (a safety snapshot is taken first); "
                         "nothing was changed")
    restore_op.restore(host, args.names, args.snapshot)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("restore", build_parser(), run, argv, host)
