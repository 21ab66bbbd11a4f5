"""outdated: find the processes that still run code a security update
replaced, and move them onto the new code without a failed request."""

from __future__ import annotations

import argparse
import json

from .. import cli, instances, outdated, registry, units
from ..errors import SiteopsError
from ..host import Host

DESCRIPTION = f"""\
After unattended-upgrades installs a patched library or program, the
processes that loaded the old one keep running it until restarted. outdated
lists them: each service with a process whose memory maps a program or
library that was deleted or replaced on disk (the way needrestart finds
them, from /proc/PID/maps). With --restart it moves them onto the new code:
{outdated.ACTIONS}

bootstrap runs `outdated --restart` after each unattended upgrade (a
drop-in of apt-daily-upgrade.service); audit reports what still runs
replaced code (host.outdated). Exit code: 0 when nothing runs replaced code
(after --restart: nothing it restarts), 1 otherwise.
"""

EPILOG = """\
examples:
  sudo outdated                 what runs replaced code
  sudo outdated --restart       move it onto the new code
  sudo outdated --json
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("outdated", DESCRIPTION, EPILOG)
    p.add_argument("--restart", action="store_true",
                   help="move what runs replaced code onto the new code (see above)")
    p.add_argument("--json", action="store_true", help="{service: [replaced file]} as JSON")
    return p


def restart(host: Host, found: dict[str, list[str]]) -> list[str]:
    """Act on each unit as the table above says; return those left running
    replaced code on purpose (reported for the operator)."""
    sites = registry.load(host).sites
    moved: set[str] = set()
    left = []
    for unit in found:
        name = outdated.site_of(unit)
        if name in sites and name not in moved:
            if unit == units.redis_unit(name):
                with host.step(f"{unit} restarted"):
                    host.run(["systemctl", "restart", unit])
                continue
            moved.add(name)
            with registry.site_locked(host, name, f"outdated {name}") as site:
                if site.live:
                    old = units.live_instances(site)
                    site = instances.restart(host, site, "replaced libraries")
                    # The switch leaves the old processes' stop to systemd (and
                    # stops instances kept warm itself): what still runs
                    # replaced code is looked for once they are gone.
                    instances.stop(host, [u for u in old if u not in units.live_instances(site)])
        elif unit == outdated.NGINX:
            outdated.upgrade_nginx(host)
        elif unit in outdated.RESTARTED:
            with host.step(f"{unit} restarted"):
                host.run(["systemctl", "restart", unit])
        elif name not in sites:
            left.append(unit)
    return left


def run(host: Host, args: argparse.Namespace) -> int:
    found = outdated.scan()
    if args.json and not args.restart:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 1 if found else 0
    for unit, files in found.items():
        host.say(f"{unit:<40} {', '.join(files)}")
    if not found:
        host.say("nothing runs replaced code")
        return 0
    if not args.restart:
        return 1
    left = restart(host, found)
    still = {u: f for u, f in outdated.scan().items() if u not in left}
    if left:
        host.say(f"left running replaced code, restart when it suits: {', '.join(left)} "
                 "(systemctl restart UNIT)")
    if still:
        raise SiteopsError(f"still running replaced code: {', '.join(still)}")
    return 0


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("outdated", build_parser(), run, argv, host)
