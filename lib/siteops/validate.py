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

# System accounts, and groups that are (or on some hosts become) privileged:
# a site named docker would own the group that docker's socket trusts. add-site
# also refuses any name that is already a user or a group on the server.
RESERVED_NAMES = frozenset("""
    root daemon bin sys sync games man lp mail news uucp proxy www-data backup
    list irc gnats nobody nogroup systemd admin administrator deploy siteops
    postgres redis nginx www html default template0 template1 public sshd ssh
    ubuntu debian debian-exim messagebus syslog uuidd tcpdump ssl-cert sudo adm
    staff users _apt polkitd fail2ban letsencrypt certbot
    wheel shadow disk kmem tty dialout cdrom floppy tape audio video plugdev
    netdev input render sgx kvm lxd lxc libvirt libvirt_qemu docker podman
    containerd incus sambashare lpadmin operator src utmp voice fax crontab
    mlocate plocate _ssh sasl systemd_journal journal
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


# ExecStart= prefixes: '+' and '!' run with full privileges, '-' ignores
# failure, '@' and ':' and '|' change argv[0], expansion or the shell.
EXEC_PREFIXES = ("+", "!", "-", "@", ":", "|")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


SHELL_WORDS = {"&&", "||", "|", ">", ">>", "<", "&", "2>&1"}


def exec_command(what: str, command: str) -> str:
    """command if systemd can run it as ExecStart= exactly as written (what
    names it in the error)."""
    command = command.strip()
    bare = command.replace("${PORT}", "").replace("${HOST}", "")
    if not command:
        raise InvalidInput(f"invalid {what}: empty")
    if _CONTROL.search(command) or "%" in command or "$" in bare:
        raise InvalidInput(f"invalid {what} {command!r}: control characters, '%' and '$' are "
                           "not allowed (systemd would expand them); only ${PORT} and ${HOST} are")
    if command[0] in EXEC_PREFIXES or command.endswith("\\") or ";" in command.split():
        raise InvalidInput(f"invalid {what} {command!r}: it may not start with one of "
                           f"{' '.join(EXEC_PREFIXES)} (systemd would run it with other "
                           "privileges or ignore its failure), end with '\\' or contain "
                           "a lone ';'")
    if SHELL_WORDS & set(command.split()) or "$(" in command or "`" in command:
        raise InvalidInput(f"invalid {what} {command!r}: systemd runs it without a shell; "
                           "put the pipeline in a script in the repository and run that")
    return command


def start_command(value: str) -> tuple[str, str]:
    """Parse COMPONENT=COMMAND for a unit's ExecStart."""
    component, sep, command = value.partition("=")
    if not sep or component not in COMPONENTS or not command.strip():
        raise InvalidInput(f"invalid --start {value!r}: expected COMPONENT=COMMAND, "
                           f"COMPONENT one of {', '.join(COMPONENTS)}")
    return component, exec_command(f"start command of {component}", command)


PROCESS_NAME = re.compile(r"[a-z][a-z0-9]{0,19}")


def process_name(what: str, value: str) -> str:
    """A worker type or job name: it becomes part of unit and log file names."""
    if not isinstance(value, str) or not PROCESS_NAME.fullmatch(value):
        raise InvalidInput(f"invalid {what} name {value!r}: 1-20 lowercase letters and "
                           "digits, starting with a letter")
    return value


def readable_file(value: str) -> Path:
    """Return value as a Path if it names a readable file."""
    path = Path(value)
    try:
        path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{value}: {exc.strerror}") from exc
    return path


def absolute_dir(value: str) -> str:
    """Return value, normalised, if it is an absolute path of plain characters."""
    if (not value.startswith("/") or _CONTROL.search(value) or len(value) > 500
            or ".." in value.split("/") or value.strip("/") == ""):
        raise InvalidInput(f"invalid directory {value!r}: expected an absolute path below /")
    return "/" + "/".join(p for p in value.split("/") if p and p != ".")


# Git input reaches `git` as an argument (always after `--` or as a revision,
# never first), but is checked here too: no options, no helper transports
# (`ext::sh -c ...`), no control characters.
_SCP_URL = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:(?!-)[A-Za-z0-9._~/+-]+")
_URL = re.compile(r"(https|ssh|file)://[^\s]+")
_REF_BAD = re.compile(r"(^[-/.])|(\.\.)|(@\{)|([\x00-\x20\x7f~^:?*\[\\])|(/\.)|(\.lock$)|([/.]$)|(//)")


def repo_url(value: str) -> str:
    """Return value if it is a git URL siteops fetches: https://, ssh://, file://,
    an scp-like user@host:path, or an absolute local path."""
    ok = (_URL.fullmatch(value) or _SCP_URL.fullmatch(value)
          or (value.startswith("/") and not re.search(r"[\x00-\x20\x7f]", value)))
    if not ok or "::" in value or len(value) > 1000:
        raise InvalidInput(
            f"invalid repository {value!r}: use https://, ssh://, file://, user@host:path "
            "or an absolute path (no options, helper transports or spaces)")
    if value.startswith("https://") and "@" in value.split("/")[2]:
        # Never echoed: it would reach the registry, the output and actions.jsonl.
        raise InvalidInput("invalid repository: credentials in an https:// URL would be stored "
                           "and shown; use an ssh:// URL with a deploy key in "
                           "/etc/siteops/deploy-keys/NAME")
    return value


# Characters that reorder how a terminal shows text (a name could then look
# like another).
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def git_ref(value: str) -> str:
    """Return value if it is a branch, tag or commit name git would accept."""
    if not value or len(value) > 200 or _REF_BAD.search(value) or _BIDI.search(value):
        raise InvalidInput(f"invalid ref {value!r}: expected a branch, tag or commit "
                           "(no leading '-', spaces, control or bidi characters, '..', "
                           "'~^:?*[' or '@{')")
    return value


RELEASE_ID = re.compile(r"\d{8}T\d{6}Z(-\d+)?")


def release_id(value: str) -> str:
    """Return value if it looks like a release name (UTC timestamp)."""
    if not RELEASE_ID.fullmatch(value):
        raise InvalidInput(f"invalid release {value!r}: expected a name like 20261125T201500Z "
                           "(see rollback --list)")
    return value


def number(flag: str, low: int, high: int):
    """An argparse type: a whole number from low to high (ASCII digits only)."""
    def parse(value: str) -> int:
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise InvalidInput(f"invalid {flag} {value!r}: a number from {low} to {high}")
        return int(value)
    return parse


SLEEP_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_SLEEP, MAX_SLEEP = 10, 7 * 86400


def sleep_after(value: str) -> int | None:
    """--sleep-after: 90s, 15m, 2h or 1d (10 s to 7 days), or never (None).

    >>> sleep_after("15m"), sleep_after("never")
    (900, None)
    """
    if value == "never":
        return None
    m = re.fullmatch(r"([1-9][0-9]{0,6})([smhd])", value)
    seconds = int(m.group(1)) * SLEEP_UNITS[m.group(2)] if m else 0
    if not MIN_SLEEP <= seconds <= MAX_SLEEP:
        raise InvalidInput(f"invalid --sleep-after {value!r}: a time like 90s, 15m, 2h or 1d "
                           "(10s to 7d), or never")
    return seconds


def duration(seconds: int | None) -> str:
    """How sleep_after reads a time back: 15m, 90s, never."""
    if seconds is None:
        return "never"
    for unit, size in sorted(SLEEP_UNITS.items(), key=lambda u: -u[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def keep_count(value: str) -> int:
    """Return value as a number of releases to keep (2-100)."""
    if not (value.isascii() and value.isdigit()) or not 2 <= int(value) <= 100:
        raise InvalidInput(f"invalid --keep {value!r}: a number from 2 to 100 "
                           "(the live release and a rollback target are always kept)")
    return int(value)
