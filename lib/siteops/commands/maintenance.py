"""maintenance: answer a site's visitors with a 503 page while its apps keep running."""

from __future__ import annotations

import argparse

from .. import cli, nginx, registry, validate
from ..errors import UsageError
from ..host import Host
from ..journal import now, who
from ..model import Maintenance

DESCRIPTION = """\
Put site NAME in maintenance, or take it out. In maintenance nginx answers
every request to the site's domains with a 503 page (your --message, a
Retry-After header, Cache-Control: no-store), rate limited as usual; the ACME
challenge path still answers (a certificate can renew), and the site's apps,
workers and jobs keep running (reach them on 127.0.0.1 to check them). The
change is checked with `nginx -t` and applied with a reload: no connection
is dropped. Deploys, rollbacks and config changes keep the site in
maintenance until `off`. audit warns about a site left in maintenance.

Without on or off it says whether the site is in maintenance.
"""

EPILOG = """\
examples:
  sudo maintenance shop on --message "Upgrading the database, back at 14:00" --retry-after 1800
  sudo maintenance shop off
  sudo maintenance shop
"""

MAX_MESSAGE = 500


def message(value: str) -> str:
    if len(value) > MAX_MESSAGE or any(ord(c) < 32 for c in value):
        raise validate.InvalidInput(f"invalid --message: at most {MAX_MESSAGE} characters, "
                                    "on one line")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("maintenance", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("state", nargs="?", choices=("on", "off"), help="on or off")
    p.add_argument("--message", type=message, default="", metavar="TEXT",
                   help="on: the sentence visitors read (HTML is shown as text)")
    p.add_argument("--retry-after", type=validate.number("--retry-after", 1, 7 * 86400),
                   default=300, metavar="S",
                   help="on: seconds clients are told to wait (default 300)")
    return p


def run(host: Host, args: argparse.Namespace) -> None:
    name = args.name
    if args.state != "on" and (args.message or args.retry_after != 300):
        raise UsageError("--message and --retry-after go with on")
    if args.state is None:
        site = registry.get_site(registry.load(host), name)
        m = site.maintenance
        host.say(f"{name}: in maintenance since {m.since} ({m.by}), Retry-After "
                 f"{m.retry_after}" if m else f"{name}: serving (not in maintenance)")
        return
    wanted = Maintenance(args.message, args.retry_after, now(), who()) \
        if args.state == "on" else None
    with registry.site_locked(host, name, f"maintenance {name} {args.state}"):
        with host.step(f"{name} {'in' if wanted else 'out of'} maintenance (registry)"):
            def change(entry):
                same = entry.maintenance and wanted and (
                    entry.maintenance.message, entry.maintenance.retry_after) == (
                    wanted.message, wanted.retry_after)
                if not same:
                    entry.maintenance = wanted
            site = registry.update_site(host, name, f"maintenance {name}", change)
        nginx.ensure_site(host, site)
    host.say(f"{name}: " + ("in maintenance: visitors get a 503 page; the apps keep running"
                            if wanted else "serving again"))


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("maintenance", build_parser(), run, argv, host)
