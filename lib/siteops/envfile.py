"""A site's shared/.env: created 0600 with generated secrets; existing values
are never regenerated or overwritten, and lines the operator added are kept."""

from __future__ import annotations

import re
import secrets
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


def assign(text: str, changes: dict[str, str | None]) -> str:
    """text with each key of changes set to its value (None: removed). A key
    set keeps its place (its last line; earlier duplicates go); new keys are
    appended; every other line stays as it was."""
    last = {key: i for i, (key, _, _) in enumerate(entries(text)) if key is not None}
    lines = []
    for i, (key, _, raw) in enumerate(entries(text)):
        if key in changes:
            if last[key] != i or changes[key] is None:
                continue
            raw = f"{key}={quote(changes[key])}\n"
        lines.append(raw if raw.endswith("\n") else raw + "\n")
    lines += [f"{k}={quote(v)}\n" for k, v in changes.items() if v is not None and k not in last]
    return "".join(lines)


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
    if set(parse(text)) & set(MOVED_TO_UNIT):
        text = assign(text, dict.fromkeys(MOVED_TO_UNIT))
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
