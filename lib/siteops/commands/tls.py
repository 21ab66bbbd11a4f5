"""tls: put a site on HTTPS (issue its certificate, then serve it), or change
how; add-site NAME --tls does the same for a new site."""

from __future__ import annotations

import argparse
import re

from .. import cli, registry, validate
from ..ops import sites as sites_op
from ..host import Host

DESCRIPTION = """\
Put site NAME on HTTPS: certbot obtains one certificate for all the site's
domains (its lineage is /etc/letsencrypt/live/NAME) with the webroot method,
answering the CA's HTTP-01 challenge through nginx's ACME location; then nginx
gets the site's HTTPS server (Mozilla intermediate TLS, http2) and redirects
HTTP to it, the ACME path excepted. Run it again after changing the site's
domains (add-site NAME --domain ...): the certificate is issued again for
exactly those domains.

If issuance fails, the site keeps serving exactly what it served before and
the command exits 1 naming the likely cause (DNS, HTTP-01 reachability, rate
limit); running it again completes it. certbot's timer renews the
certificate; the deploy hook bootstrap installs reloads nginx (nginx -t first)
so the renewed one is served without a restart.
"""

EPILOG = """\
examples:
  sudo tls shop --email ops@example.com
  sudo tls shop --staging                     Let's Encrypt's staging CA (untrusted certs)
  sudo tls shop --hsts                        add Strict-Transport-Security (2 years)
"""

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def email(value: str) -> str:
    if not _EMAIL.fullmatch(value) or len(value) > 254:
        raise validate.InvalidInput(f"invalid --email {value!r}: expected an address like "
                                    "ops@example.com")
    return value


def acme_server(value: str) -> str:
    if not re.fullmatch(r"https://[A-Za-z0-9.-]+(:\d+)?(/[A-Za-z0-9._~/-]*)?", value):
        raise validate.InvalidInput(f"invalid --acme-server {value!r}: expected an https:// "
                                    "ACME directory URL")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The TLS options tls and add-site --tls share."""
    p.add_argument("--email", type=email, help="the ACME account's contact address "
                   "(expiry warnings); without it the account has none")
    p.add_argument("--staging", action="store_true", default=None,
                   help="use Let's Encrypt's staging CA (for trying; its certificates are "
                        "not trusted by browsers)")
    p.add_argument("--hsts", action=argparse.BooleanOptionalAction, default=None,
                   help="send Strict-Transport-Security (max-age 2 years): browsers then "
                        "refuse plain HTTP for the site; off unless asked for")
    p.add_argument("--acme-server", type=acme_server, metavar="URL",
                   help="another ACME directory (e.g. a test CA such as pebble)")
    p.add_argument("--acme-ca-bundle", type=validate.readable_file, metavar="FILE",
                   help="the CA certificate that --acme-server's HTTPS is signed with")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("tls", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    add_arguments(p)
    return p


def asked(args: argparse.Namespace) -> sites_op.TlsAsked:
    """The settings add_arguments' options ask for."""
    return sites_op.TlsAsked(email=args.email, hsts=args.hsts, staging=args.staging,
                             server=args.acme_server,
                             ca_bundle=str(args.acme_ca_bundle) if args.acme_ca_bundle else None)


def run(host: Host, args: argparse.Namespace) -> None:
    with registry.site_locked(host, args.name, f"tls {args.name}"):
        site = sites_op.enable_tls(host, args.name, asked(args))
    host.say(f"site {args.name}: HTTPS for {', '.join(site.domains)}"
             + (" (in this dry run)" if host.dry_run else ""))


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("tls", build_parser(), run, argv, host)
