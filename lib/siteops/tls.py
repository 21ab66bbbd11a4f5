"""TLS with certbot: the renewal deploy hook that makes nginx serve renewed
certificates (hooks in renewal-hooks/ run on `renew` only)."""

from __future__ import annotations

import datetime
from pathlib import Path

from .system import Host
from .templates import render

HOOK = "/etc/letsencrypt/renewal-hooks/deploy/siteops-reload-nginx"


def ensure_renewal_hook(host: Host) -> None:
    """Install the deploy hook: `nginx -t` then reload, so a bad config never reloads."""
    with host.step("certbot renewal hook (nginx -t, reload)"):
        host.write(host.paths.p(HOOK), render("certbot/reload-nginx"), 0o755)


def not_after(host: Host, pem: Path) -> str | None:
    """When the first certificate in pem expires, as 2026-11-25T20:15:00Z."""
    out = host.query(["openssl", "x509", "-noout", "-enddate", "-in", pem], ok=range(256)).out
    try:
        end = datetime.datetime.strptime(out.strip().partition("=")[2], "%b %d %H:%M:%S %Y %Z")
    except ValueError:
        return None
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")
