"""TLS with certbot: one certificate per site (lineage NAME) for all its
domains, issued with the webroot method through nginx's ACME location, and the
renewal deploy hook that makes nginx serve renewed certificates (hooks in
renewal-hooks/ run on `renew` only; certbot's own timer renews).

Issuance never touches nginx: the site's HTTPS server appears only once the
certificate is on disk, so a failed issuance leaves the site serving exactly
what it served, and a re-run completes it."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

from . import nginx
from .errors import CommandError, SiteopsError
from .model import Site, Tls
from .host import Host, clean
from .templates import render


# certbot's error output -> what the operator should look at.
CAUSES = [
    (re.compile(r"DNS problem|NXDOMAIN|no valid A records|SERVFAIL|while resolving|"
                r"lookup \S+ on", re.I),
     "DNS: the domain does not resolve to this server"),
    (re.compile(r"rateLimited|too many (certificates|failed authorizations|new orders)", re.I),
     "rate limit: the CA refuses more certificates for now (try --staging, or wait)"),
    (re.compile(r"Timeout|Connection refused|connection reset|Invalid response|"
                r"unauthorized|404|Fetching http", re.I),
     "HTTP-01: the CA could not fetch /.well-known/acme-challenge/ from this server on "
     "port 80 (DNS pointing elsewhere, a firewall, or a proxy in front)"),
]


def ensure_renewal_hook(host: Host) -> None:
    """Install the deploy hook: `nginx -t` then reload, so a bad config never reloads."""
    with host.step("certbot renewal hook (nginx -t, reload)"):
        host.write(host.paths.certbot_hook, render("certbot/reload-nginx"), 0o755)


def not_after(host: Host, pem: Path) -> str | None:
    """When the first certificate in pem expires, as 2026-11-25T20:15:00Z."""
    out = host.query(["openssl", "x509", "-noout", "-enddate", "-in", pem], ok=range(256)).out
    try:
        end = datetime.datetime.strptime(out.strip().partition("=")[2], "%b %d %H:%M:%S %Y %Z")
    except ValueError:
        return None
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")


def lineage(host: Host, site: Site) -> Path:
    """certbot's live directory for the site's certificate."""
    return host.paths.certificate(site.name)[0]


def renewal_conf(host: Host, site: Site) -> Path:
    return host.paths.certificate(site.name)[2]


def names(host: Host, pem: Path) -> set[str]:
    """The DNS names a certificate covers (its subjectAltName)."""
    out = host.query(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", pem],
                     ok=range(256)).out
    return set(re.findall(r"DNS:([^,\s]+)", out))


def needs_issuing(host: Host, site: Site) -> bool:
    """True unless the site's certificate exists and covers exactly its domains."""
    pem = lineage(host, site) / "fullchain.pem"
    return not pem.exists() or names(host, pem) != set(site.domains)


def certbot_argv(host: Host, site: Site) -> list[str]:
    """certbot certonly for every domain of the site in one certificate."""
    t = site.tls or Tls()
    argv = ["certbot", "certonly", "--webroot", "-w", str(host.paths.acme_root),
            "--cert-name", site.name, "--non-interactive", "--agree-tos"]
    argv += ["-m", t.email] if t.email else ["--register-unsafely-without-email"]
    if t.staging:
        argv.append("--staging")
    if t.server:
        argv += ["--server", t.server]
    for domain in site.domains:
        argv += ["-d", domain]
    return argv


def issue(host: Host, site: Site) -> bool:
    """Obtain (or re-issue for changed domains) the site's certificate; True if
    certbot ran. SiteopsError naming the likely cause if the CA refuses."""
    with host.step(f"certificate for {', '.join(site.domains)}"):
        if not needs_issuing(host, site):
            return False
        bundle = site.tls.ca_bundle if site.tls else None
        env = {"REQUESTS_CA_BUNDLE": bundle} if bundle else None
        if not host.dry_run:  # a re-issue keeps the file names: nginx must reload
            nginx.mark_reload_pending(host)
        try:
            host.run(certbot_argv(host, site), env=env, timeout=600, stream=True)
        except CommandError as exc:
            raise SiteopsError(f"certificate for {', '.join(site.domains)} not issued: "
                               f"{cause(exc.stderr)}; the site keeps serving HTTP as before. "
                               "Run the command again once that is fixed.\n--- certbot said:\n"
                               + "\n".join(clean(exc.stderr).strip().splitlines()[-8:])) from exc
        return True


def cause(output: str) -> str:
    """The likely cause of a failed issuance, from certbot's output."""
    for pattern, text in CAUSES:
        if pattern.search(output):
            return text
    return "the CA refused it (see certbot's output below)"
