"""The suite's journal: when (UTC, to the second), who (the sudo caller or
root), and the JSON-lines logs in /var/log/siteops it appends to."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from .paths import Paths
from .users import sudo_caller


ISO = "%Y-%m-%dT%H:%M:%SZ"


def now() -> str:
    """The time now, as 2026-11-25T20:15:00Z."""
    return datetime.datetime.now(datetime.timezone.utc).strftime(ISO)


def hours_between(then: str, now: str) -> float:
    """Hours from then to now (both as now() writes them); ValueError if either
    is not such a time."""
    return (datetime.datetime.strptime(now, ISO)
            - datetime.datetime.strptime(then, ISO)).total_seconds() / 3600


def who() -> str:
    """Who runs this command: the user who called sudo, or root; for a tenant
    key, its label and fingerprint (set by the tenant command, as root: sudo
    passes no variable of its caller's by that name)."""
    key = os.environ.get("SITEOPS_KEY")
    return (sudo_caller() or "root") + (f" (key {key})" if key else "")


def record_action(paths: Paths, entry: dict) -> None:
    """Append one line to the action log, stamped with the time, if the host
    has siteops's log directory (bootstrap makes it)."""
    if paths.log_dir.is_dir():
        append(paths.actions_log, {"time": now(), **entry})


def append(path: Path, entry: dict) -> None:
    """Append one JSON line to a log (0640, created if missing, never through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o640)
    with os.fdopen(fd, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
