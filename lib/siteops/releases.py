"""Releases of a site and their history, as kept in its registry entry.

site.releases maps a release id (its UTC timestamp, which sorts in time
order) to a Release: commit, ref, repo, who, start/end, result and what the
release runs (commands, health paths). site.history lists every deploy and
rollback. These functions are pure: they decide, the commands act.
"""

from __future__ import annotations

import datetime

from .journal import now, who
from .model import BUILDING, FAILED, OK, Event, Site

HISTORY_LIMIT = 200


def new_id(site: Site, when: datetime.datetime | None = None) -> str:
    """A fresh release id: the UTC time, with -2, -3... if that second is taken."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    base = when.strftime("%Y%m%dT%H%M%SZ")
    taken = set(site.releases)
    rid, n = base, 1
    while rid in taken:
        n += 1
        rid = f"{base}-{n}"
    return rid


def live_id(site: Site) -> str | None:
    return site.live.release if site.live else None


def ordered(site: Site) -> list[str]:
    """Release ids, oldest first."""
    return sorted(site.releases, key=_sort_key)


def _sort_key(rid: str) -> tuple[str, int]:
    base, _, n = rid.partition("-")
    return base, int(n or 1)


def rollback_target(site: Site) -> str | None:
    """Where a rollback without --to goes: the newest good release older than the
    live one that has not itself been rolled back from. Two rollbacks in a row
    thus go two releases back and never bounce forward to the one just left."""
    live = live_id(site)
    if live is None:
        return None
    records = site.releases
    older = [r for r in ordered(site) if _sort_key(r) < _sort_key(live)
             and records[r].result == OK and not records[r].rolled_back]
    return older[-1] if older else None


def deps_donor(site: Site, key: str | None, exists) -> str | None:
    """The newest good release whose dependencies were installed under the
    same key and are still on disk (exists(rid)), to copy them from."""
    if key is None:
        return None
    for rid in reversed(ordered(site)):
        record = site.releases[rid]
        if record.result == OK and record.deps == key and exists(rid):
            return rid
    return None


def stale(site: Site) -> list[str]:
    """Releases still marked building: their deploy died (the caller holds the site lock)."""
    return [r for r in ordered(site) if site.releases[r].result == BUILDING]


def to_prune(site: Site, keep: int) -> list[str]:
    """Releases to delete, failed ones first: all failed, and good ones beyond the
    newest `keep`; never the live release, the rollback target nor a release
    kept warm."""
    records = site.releases
    protected = {live_id(site), rollback_target(site), site.warm and site.warm.release}
    failed = [r for r in ordered(site) if records[r].result == FAILED]
    good = [r for r in ordered(site) if records[r].result == OK]
    old_good = good[:-keep] if keep < len(good) else []
    return [r for r in failed + old_good if r not in protected]


def record_event(site: Site, action: str, release: str, result: str, **fields) -> None:
    """Append an event, stamped with the time and who ran it, to the site's
    history, keeping the last HISTORY_LIMIT events."""
    event = Event(action, release, result, who(), now(), extra=fields)
    site.history = (site.history + [event])[-HISTORY_LIMIT:]


def error_text(exc: BaseException) -> str:
    """The first line of an error, for the registry's history."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
