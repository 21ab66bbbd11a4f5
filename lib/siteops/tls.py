"""TLS with certbot: the renewal deploy hook that makes nginx serve renewed
certificates (hooks in renewal-hooks/ run on `renew` only)."""

from __future__ import annotations

from .system import Host
from .templates import render

HOOK = "/etc/letsencrypt/renewal-hooks/deploy/siteops-reload-nginx"


def ensure_renewal_hook(host: Host) -> None:
    """Install the deploy hook: `nginx -t` then reload, so a bad config never reloads."""
    with host.step("certbot renewal hook (nginx -t, reload)"):
        host.write(host.paths.p(HOOK), render("certbot/reload-nginx"), 0o755)
