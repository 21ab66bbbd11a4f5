"""add-site: create (or complete) one completely isolated site."""

from __future__ import annotations

import argparse

from .. import cli, model, validate
from . import tls as tls_command
from ..ops import sites as sites_op
from ..host import Host

DESCRIPTION = """\
Create a site NAME that shares nothing with the other sites, or finish one
that an interrupted run left half-made (its registry state says
"provisioning"). Running it again changes nothing; with other --domain or
--components values it updates the site to them.

What it creates:
  user        NAME, nologin, home /srv/sites/NAME, its own group and UID
  directories /srv/sites/NAME/{releases,shared/{logs,uploads,redis,backups}}
  ports       slot k of the registry: frontend 3100+10k, API 4000+10k,
              Redis 5000+10k, all on 127.0.0.1 (slots 90 and up: the second
              range, 10000-39999, see docs/server.md); nftables lets only NAME
              answer from them and only NAME, nginx and root connect to them
  .env        shared/.env (0600): DATABASE_URL, REDIS_URL, NODE_ENV and
              generated secrets; values already there are never changed (PORT,
              FRONTEND_PORT and API_PORT are set by each instance's unit)
  database    PostgreSQL role and database NAME, no access for anyone else
  redis       NAME-redis.service, the site's own password-protected instance
  systemd     templates NAME-frontend@.service / NAME-api@.service (the
              instance is the port) in siteops-NAME.slice, hardened; deploy
              starts them; when they change, the live release moves to fresh
              instances without dropping a request
  nginx       sites-available/NAME.conf (+ enabled link): rate limits (API
              10 r/s burst 20, general 30 r/s burst 50, status 429), ACME
              path exempt, TLS when a certificate exists; a placeholder page
              until the first deploy; checked with `nginx -t` first
  logrotate   /etc/logrotate.d/siteops-NAME: daily, 14 days, compressed
  registry    the site's entry in /var/lib/siteops/registry.json
"""

EPILOG = """\
examples:
  sudo ./bin/add-site shop --domain shop.example.com --domain www.shop.example.com
  sudo ./bin/add-site blog --domain blog.example.com --components frontend \\
      --start frontend="node server.js"
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("add-site", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name,
                   help="site name: 2-32 of a-z, 0-9, _ starting with a letter; also the "
                        "Unix user, database and unit prefix")
    p.add_argument("--domain", dest="domains", action="append", type=validate.domain,
                   required=True, metavar="DOMAIN",
                   help="host name nginx serves for the site (repeat for more; the first "
                        "one names the TLS certificate)")
    p.add_argument("--components", type=validate.components, default=None,
                   metavar="LIST", help="comma-separated: frontend, api (default: frontend,api "
                                        "for a new site, each started only when the app "
                                        "declares a command for it; named here, each must be; "
                                        "unchanged for an existing one)")
    p.add_argument("--tls", action="store_true",
                   help="put the site on HTTPS: issue its certificate (certbot, HTTP-01 through "
                        "nginx) and serve it; see `tls --help`. A site on HTTPS gets its "
                        "certificate issued again when its domains change")
    tls_command.add_arguments(p)
    p.add_argument("--sleep-after", type=validate.sleep_after, default=argparse.SUPPRESS,
                   metavar="TIME",
                   help="stop every process of the site after this long without a request "
                        "(90s, 15m, 2h, 1d) and start them on the next one, or never (a new "
                        "site's default: the host's, bootstrap --sleep-after; unchanged for "
                        "an existing one); see docs/sleeping.md")
    p.add_argument("--start", action="append", type=validate.start_command, default=[],
                   metavar="COMPONENT=COMMAND",
                   help="command a component's unit runs in current/ (default: "
                        f"frontend={model.DEFAULT_COMMANDS['frontend']!r}, "
                        f"api={model.DEFAULT_COMMANDS['api']!r})")
    return p


def run(host: Host, args: argparse.Namespace) -> None:
    sites_op.add_site(host, args.name, args.domains, components=args.components,
                      starts=args.start, https=args.tls, tls_asked=tls_command.asked(args),
                      sleep_after=getattr(args, "sleep_after", sites_op.KEEP))


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("add-site", build_parser(), run, argv, host)
