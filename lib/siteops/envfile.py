"""A site's shared/.env: created 0600 with generated secrets; existing values
are never regenerated or overwritten, and lines the operator added are kept."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

ENV_HEADER = ("# Managed by siteops add-site: existing values are never changed.\n"
              "# Add your own settings below; restart the site's services to apply.\n")


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE pairs of an env file (comments and blank lines skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe (no quoting needed anywhere)."""
    return secrets.token_urlsafe(32)


def wanted(site: dict, db_port: int) -> dict[str, callable]:
    """The keys a site's .env must have, each with a function making its first value."""
    name, ports = site["name"], site["ports"]
    keys = {
        "NODE_ENV": lambda: "production",
        "DATABASE_URL": lambda: f"postgresql://{name}:{secret()}@localhost:{db_port}/{name}",
        "REDIS_URL": lambda: f"redis://default:{secret()}@127.0.0.1:{ports['redis']}/0",
    }
    for component in site["components"]:
        keys[f"{component.upper()}_PORT"] = lambda c=component: str(ports[c])
    keys["SESSION_SECRET"] = secret
    keys["JWT_SECRET"] = secret
    return keys


def merge(current: str | None, site: dict, db_port: int) -> str:
    """The .env text: current lines kept as they are, missing keys appended."""
    text = current if current is not None else ENV_HEADER
    have = parse(text)
    missing = [f"{k}={make()}\n" for k, make in wanted(site, db_port).items() if k not in have]
    if missing and not text.endswith("\n"):
        text += "\n"
    return text + "".join(missing)


def passwords(text: str) -> tuple[str, str]:
    """The database and Redis passwords held in an .env text."""
    values = parse(text)
    return (urlsplit(values["DATABASE_URL"]).password or "",
            urlsplit(values["REDIS_URL"]).password or "")
