"""A site's shared/.env: created 0600 with generated secrets; existing values
are never regenerated or overwritten, and lines the operator added are kept."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from .model import Site

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


def wanted(site: Site, db_port: int) -> dict[str, callable]:
    """The keys a site's .env must have, each with a function making its first value."""
    name, ports = site.name, site.ports
    keys = {
        "NODE_ENV": lambda: "production",
        "DATABASE_URL": lambda: f"postgresql://{name}:{secret()}@localhost:{db_port}/{name}",
        "REDIS_URL": lambda: f"redis://default:{secret()}@127.0.0.1:{ports['redis']}/0",
    }
    keys["SESSION_SECRET"] = secret
    keys["JWT_SECRET"] = secret
    return keys


# Set per instance by its systemd drop-in since deploys alternate between two
# ports; a value in .env would override the unit's (EnvironmentFile= wins).
MOVED_TO_UNIT = ("FRONTEND_PORT", "API_PORT", "PORT")


def merge(current: str | None, site: Site, db_port: int) -> str:
    """The .env text: current lines kept as they are, missing keys appended,
    port settings (now the unit's) dropped."""
    text = current if current is not None else ENV_HEADER
    text = "".join(line for line in text.splitlines(keepends=True)
                   if line.split("=", 1)[0].strip() not in MOVED_TO_UNIT)
    have = parse(text)
    missing = [f"{k}={make()}\n" for k, make in wanted(site, db_port).items() if k not in have]
    if missing and not text.endswith("\n"):
        text += "\n"
    return text + "".join(missing)


def secrets_of(text: str) -> list[str]:
    """Every secret an .env text holds: long values, and passwords inside URLs."""
    found = []
    for value in parse(text).values():
        if len(value) >= 16:
            found.append(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password:
                found.append(password)
    return found


def passwords(text: str) -> tuple[str, str]:
    """The database and Redis passwords held in an .env text."""
    values = parse(text)
    return (urlsplit(values["DATABASE_URL"]).password or "",
            urlsplit(values["REDIS_URL"]).password or "")
