"""remove-site: take a site off the host, after a final backup."""

from __future__ import annotations

import argparse
import sys

from .. import cli, validate
from ..errors import UsageError
from ..host import Host
from ..ops import sites as sites_op

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


def confirm(name: str) -> None:
    if sys.stdin.isatty():
        typed = input(f"remove site {name} and its data (a final backup is kept)? "
                      "type its name: ").strip()
        if typed == name:
            return
    raise UsageError(f"not removing site {name}: pass --yes (or type its name at the "
                     "prompt); nothing was changed")


def run(host: Host, args: argparse.Namespace) -> None:
    sites_op.remove_site(host, args.name, keep_data=args.keep_data,
                         final_backup=not args.no_backup,
                         confirm=None if args.yes or host.dry_run else confirm)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("remove-site", build_parser(), run, argv, host)
