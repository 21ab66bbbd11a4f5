"""move-site: move a site to another host of the inventory."""

from __future__ import annotations

import argparse

from .. import cli, fleet, validate
from ..errors import UsageError
from ..host import Host
from ..ops import move

DESCRIPTION = """\
Move site NAME to HOST (hosts list), in stages; each is safe to stop and run
again (it resumes), and the site is served throughout, by one host or the
other, never by both writing.

  1 copy     HOST is checked (reachable, same siteops, a free slot, room for
             the data, the name free there); the site is backed up here, the
             snapshot copied with restic over SSH into a transfer repository
             on HOST, and restored there as a new site (same name, domains,
             components, limits, workers, jobs, secrets, certificate,
             mirror), its live commit deployed and health-checked; its
             workers and timers are held there. This host keeps serving.
  2 freeze   this host answers 503 (maintenance) and stops the site's
             workers and timers; a last backup is copied and restored on
             HOST, whose health is checked through its nginx.
  3 forward  HOST starts the workers and timers and trusts this host's
             forwarded visitor addresses; this host's nginx sends the
             site's traffic to HOST (HTTPS verified when the site has a
             certificate), so visitors whose DNS still says this host are
             served by HOST.

Then point the site's DNS records at HOST, and once they have moved run
`move-site NAME --finish`: a final backup here, the site removed from this
host (its slot freed, forwarding stopped), the transfer repository removed.
`--abort` before that puts the site back here as it was and removes HOST's
copy (after the forward stage, what visitors wrote on HOST since is lost:
it needs --yes).
"""

EPILOG = """\
examples:
  sudo move-site shop --to big
  sudo move-site shop --finish
  sudo move-site shop --abort
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("move-site", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site to move")
    p.add_argument("--to", type=fleet.host_name, metavar="HOST", help="the host to move it to")
    p.add_argument("--finish", action="store_true", help="remove it here once DNS has moved")
    p.add_argument("--abort", action="store_true", help="put it back here, remove HOST's copy")
    p.add_argument("--yes", action="store_true",
                   help="--abort after the forward stage; --finish while visitors still "
                        "arrived here in the last hour")
    p.add_argument("--receive", choices=move.RECEIVE_STEPS,
                   help="on HOST, run by move-site over SSH: one step of receiving the site")
    p.add_argument("--bytes", type=validate.number("--bytes", 0, 2**50), default=0,
                   metavar="N", help="with --receive check: the room the site needs")
    p.add_argument("--trust", metavar="ADDRESS",
                   help="with --receive serve: the sending host's address, whose forwarded "
                        "visitor addresses HOST trusts")
    return p


def run(host: Host, args: argparse.Namespace) -> None:
    chosen = [bool(args.to), args.finish, args.abort, bool(args.receive)]
    if sum(chosen) != 1:
        raise UsageError("give one of --to HOST, --finish, --abort")
    if args.receive:
        move.receive(host, args.name, args.receive, size=args.bytes, trust=args.trust)
    elif args.to:
        move.start(host, args.name, args.to)
    elif args.finish:
        move.finish(host, args.name, confirmed=args.yes)
    else:
        move.abort(host, args.name, confirmed=args.yes)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("move-site", build_parser(), run, argv, host)
