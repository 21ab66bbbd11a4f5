"""A site's shared/.env: created 0600 with generated secrets; existing values
are never regenerated or overwritten, and lines the operator added are kept."""

from __future__ import annotations

import re
import secrets
from typing import Callable, Mapping
from urllib.parse import urlsplit

from .model import Site

ENV_HEADER = ("# Managed by siteops add-site: existing values are never changed.\n"
              "# Add your own settings below; restart the site's services to apply.\n")


KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
BARE = re.compile(r"[A-Za-z0-9_@%+=:,./~^-]*")
NEED_ESCAPE = '"\\`$'  # what a backslash escapes inside double quotes


def entries(text: str) -> list[tuple[str | None, str, str]]:
    r"""The file as (key, value, raw text) entries; comments, blank lines and
    lines without '=' have key None. Read the way systemd reads EnvironmentFile=
    (src/basic/env-file.c): bare values lose trailing blanks and take
    backslash escapes; single quotes are literal; double quotes unescape
    \\ \" \` \$; quoted values may span lines; a later key wins."""
    out: list[tuple[str | None, str, str]] = []
    i, n = 0, len(text)
    while i < n:
        start = i
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] in "#;" or i == n:
            while i < n and text[i] not in "\r\n":
                i += 2 if text[i] == "\\" and i + 1 < n and text[i + 1] not in "\r\n" else 1
            i = min(i + 1, n)
            out.append((None, "", text[start:i]))
            continue
        eq = i
        while eq < n and text[eq] not in "=\r\n":
            eq += 1
        if eq == n or text[eq] != "=":
            i = min(eq + 1, n)
            out.append((None, "", text[start:i]))
            continue
        key, value, i = text[i:eq].rstrip(" \t"), [], eq + 1
        state, blank = "pre", None
        while i < n:
            c = text[i]
            i += 1
            if state in ("pre", "bare") and c in "\r\n":
                break
            if state == "pre":
                if c in "'\"":
                    state = c
                elif c == "\\":
                    state = "bare-escape"
                elif c not in " \t":
                    state, blank = "bare", None
                    value.append(c)
            elif state == "bare":
                if c == "\\":
                    state, blank = "bare-escape", None
                else:
                    blank = (blank if blank is not None else len(value)) if c in " \t" else None
                    value.append(c)
            elif state == "bare-escape":
                state = "bare"
                if c not in "\r\n":
                    value.append(c)
            elif state == "'":
                if c == "'":
                    state = "pre"
                else:
                    value.append(c)
            elif state == '"':
                if c == '"':
                    state = "pre"
                elif c == "\\":
                    state = "dq-escape"
                else:
                    value.append(c)
            else:  # dq-escape
                state = '"'
                if c in NEED_ESCAPE:
                    value.append(c)
                elif c != "\n":
                    value.append("\\" + c)
        if state == "bare" and blank is not None:
            value = value[:blank]
        out.append((key, "".join(value), text[start:i]))
    return out


def parse(text: str) -> dict[str, str]:
    """KEY=VALUE pairs of an env file, as systemd reads them (see entries)."""
    return {key: value for key, value, _ in entries(text) if key is not None}


def quote(value: str) -> str:
    """value written so that systemd (and dotenv readers) read it back exactly:
    bare when plain, else in single quotes (literal), else in double quotes."""
    if BARE.fullmatch(value):
        return value
    if "'" not in value:
        return f"'{value}'"
    return '"' + "".join("\\" + c if c in NEED_ESCAPE else c for c in value) + '"'


def assign(text: str, changes: Mapping[str, str | None]) -> str:
    """text with each key of changes set to its value (None: removed). A key
    set keeps its place (its last line; earlier duplicates go); new keys are
    appended; every other line stays as it was."""
    last = {key: i for i, (key, _, _) in enumerate(entries(text)) if key is not None}
    lines = []
    for i, (key, _, raw) in enumerate(entries(text)):
        if key is not None and key in changes:
            value = changes[key]
            if last[key] != i or value is None:
                continue
            raw = f"{key}={quote(value)}\n"
        lines.append(raw if raw.endswith("\n") else raw + "\n")
    lines += [f"{k}={quote(v)}\n" for k, v in changes.items() if v is not None and k not in last]
    return "".join(lines)


def secret() -> str:
    """A fresh secret: 32 random bytes, URL-safe (no quoting needed anywhere)."""
    return secrets.token_urlsafe(32)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def database_url(site: Site, password: str, db_port: int, query: str = "") -> str:
    """The site's own database: its role and database on the host's cluster."""
    return (f"postgresql://{site.user}:{password}@localhost:{db_port}/{site.database}"
            + (f"?{query}" if query else ""))


def redis_url(site: Site, password: str, db: str = "0", query: str = "") -> str:
    """The site's own Redis, on the port of its slot."""
    return (f"redis://default:{password}@127.0.0.1:{site.ports['redis']}/{db}"
            + (f"?{query}" if query else ""))


def wanted(site: Site, db_port: int) -> dict[str, Callable[[], str]]:
    """The keys a site's .env must have, each with a function making its first value."""
    return {
        "NODE_ENV": lambda: "production",
        "DATABASE_URL": lambda: database_url(site, secret(), db_port),
        "REDIS_URL": lambda: redis_url(site, secret()),
        "SESSION_SECRET": secret,
        "JWT_SECRET": secret,
    }


def points_home(key: str, url: str, site: Site, db_port: int) -> bool:
    """True if url (the .env's DATABASE_URL or REDIS_URL) names the site's own
    database or Redis: a loopback host, the port of the site's slot (or the
    cluster's), the site's role and database. Any Redis database number is the
    site's own: the whole instance is."""
    try:
        url_ = urlsplit(url)
        port = url_.port
    except ValueError:
        return False
    if url_.hostname not in LOOPBACK_HOSTS:
        return False
    if key == "REDIS_URL":
        return (url_.scheme == "redis" and port == site.ports["redis"]
                and (url_.username or "default") == "default")
    return (url_.scheme in ("postgres", "postgresql") and port == db_port
            and url_.username == site.user and url_.path == f"/{site.database}")


def bind(text: str, site: Site, db_port: int) -> str:
    """text with DATABASE_URL and REDIS_URL pointed at the site's own services
    (from the registry: its slot's Redis port, the host's PostgreSQL port),
    their passwords and query strings kept; the other lines untouched. A site
    restored into another slot, or onto another host, would otherwise talk to
    whatever now holds its old ports: a neighbour's Redis."""
    changes: dict[str, str] = {}
    for key, value in parse(text).items():
        if key not in ("DATABASE_URL", "REDIS_URL") or points_home(key, value, site, db_port):
            continue
        try:
            url = urlsplit(value)
        except ValueError:  # unparsable: a fresh secret (the services follow the .env)
            url = urlsplit("")
        password = url.password or secret()
        if key == "DATABASE_URL":
            changes[key] = database_url(site, password, db_port, url.query)
        else:
            number = url.path.strip("/")
            changes[key] = redis_url(site, password, number if number.isdigit() else "0",
                                     url.query)
    return assign(text, changes) if changes else text


# Set per instance by its systemd drop-in since deploys alternate between two
# ports; a value in .env would override the unit's (EnvironmentFile= wins).
MOVED_TO_UNIT = ("FRONTEND_PORT", "API_PORT", "PORT")


def merge(current: str | None, site: Site, db_port: int) -> str:
    """The .env text: current lines kept as they are, missing keys appended,
    port settings (now the unit's) dropped, DATABASE_URL and REDIS_URL pointed
    at the site's own services (bind)."""
    text = current if current is not None else ENV_HEADER
    if set(parse(text)) & set(MOVED_TO_UNIT):
        text = assign(text, dict.fromkeys(MOVED_TO_UNIT))
    have = parse(text)
    missing = [f"{k}={make()}\n" for k, make in wanted(site, db_port).items() if k not in have]
    if missing and not text.endswith("\n"):
        text += "\n"
    return bind(text + "".join(missing), site, db_port)


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
