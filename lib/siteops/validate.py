"""Validation of operator input: site names, domains, components.

Each validator returns the normalised value or raises UsageError; they double
as argparse `type=` functions (argparse turns ValueError into a usage error).
"""

import argparse
import re
from pathlib import Path

from .errors import UsageError

# Fits useradd (32 chars), PostgreSQL identifiers without quoting, systemd unit
# names and nginx zone names. No hyphen: `a-b-frontend.service` would be
# ambiguous and `-` nests systemd slices.
SITE_NAME = re.compile(r"[a-z][a-z0-9_]{1,31}")

RESERVED_NAMES = frozenset("""
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup
    list irc gnats nobody systemd admin administrator deploy siteops postgres
    redis nginx www html default template0 template1 public sshd ubuntu debian
    debian-exim messagebus syslog uuidd tcpdump ssl-cert sudo adm staff users
    _apt polkitd fail2ban letsencrypt certbot
""".split())

COMPONENTS = ("frontend", "api")

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class InvalidInput(UsageError, argparse.ArgumentTypeError):
    """Bad input; a usage error (exit 2) that argparse also understands."""


def site_name(value: str) -> str:
    """Return value if it is a valid new site name."""
    if not SITE_NAME.fullmatch(value):
        raise InvalidInput(
            f"invalid site name {value!r}: use 2-32 characters, lowercase letters, "
            "digits and '_', starting with a letter")
    if value in RESERVED_NAMES or value.startswith(("pg_", "systemd_")):
        raise InvalidInput(f"invalid site name {value!r}: reserved for the system")
    return value


def domain(value: str) -> str:
    """Return the lowercased domain if it is a valid DNS host name."""
    name = value.strip().lower().rstrip(".")
    if name.startswith("*."):
        raise InvalidInput(f"invalid domain {value!r}: wildcards need DNS-01 validation, "
                           "which siteops does not do")
    labels = name.split(".")
    if (len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(l) for l in labels)
            or labels[-1].isdigit()):
        raise InvalidInput(f"invalid domain {value!r}: expected a host name such as shop.example.com")
    return name


def components(value: str) -> list[str]:
    """Return the list of components named in a comma-separated value."""
    names = [c.strip() for c in value.split(",") if c.strip()]
    unknown = [c for c in names if c not in COMPONENTS]
    if not names or unknown:
        raise InvalidInput(f"invalid components {value!r}: choose from {', '.join(COMPONENTS)}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"invalid components {value!r}: a component is named twice")
    return names


def start_command(value: str) -> tuple[str, str]:
    """Parse COMPONENT=COMMAND for a unit's ExecStart."""
    component, sep, command = value.partition("=")
    if not sep or component not in COMPONENTS or not command.strip():
        raise InvalidInput(f"invalid --start {value!r}: expected COMPONENT=COMMAND, "
                           f"COMPONENT one of {', '.join(COMPONENTS)}")
    if any(c in command for c in "\n\r\0") or "%" in command or "$" in command:
        raise InvalidInput(f"invalid --start {value!r}: newlines, '%' and '$' are not allowed "
                           "(systemd would expand them)")
    return component, command.strip()


def readable_file(value: str) -> Path:
    """Return value as a Path if it names a readable file."""
    path = Path(value)
    try:
        path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{value}: {exc.strerror}") from exc
    return path
