"""The JSON registry of sites: load, save and lock it; allocate port slots.

/var/lib/siteops/registry.json is root-only (0600) and replaced atomically
while an fcntl.flock is held on registry.lock; the kernel releases the lock if
the process dies, so no stale lock can block later commands. A registry that
cannot be read or parsed stops the command and is never overwritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

from . import model, units
from .errors import SiteopsError, UsageError
from .journal import now, who
from .model import Site
from .host import Host, atomic_write


@dataclass
class Registry:
    """Every site, by name (the registry file, as types)."""
    sites: dict[str, Site] = field(default_factory=dict)


def load(host: Host) -> Registry:
    """Read and check the registry (an older schema is upgraded in memory); a
    missing one is empty, a bad one is an error."""
    path = host.paths.registry
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Registry()
    except OSError as exc:
        raise SiteopsError(f"cannot read registry {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SiteopsError(f"registry {path} is corrupt ({exc}); nothing was changed: "
                           f"repair it or restore {path.name}.bak") from exc
    if not isinstance(data, dict) or not isinstance(data.get("sites"), dict):
        raise SiteopsError(f"registry {path} is corrupt (no 'sites' object); nothing was changed")
    data = model.upgrade(data)
    if data.get("version") != model.SCHEMA_VERSION:
        raise SiteopsError(f"registry {path} has schema version {data.get('version')!r}; "
                           f"this siteops reads version {model.SCHEMA_VERSION}")
    try:
        return Registry({name: model.site_from_json(s, f"sites.{name}")
                         for name, s in data["sites"].items()})
    except (TypeError, KeyError, ValueError) as exc:
        raise SiteopsError(f"registry {path} is corrupt ({exc}); nothing was changed") from exc


def to_json(data: Registry) -> dict:
    return {"version": model.SCHEMA_VERSION,
            "sites": {name: model.site_to_json(s) for name, s in data.sites.items()}}


def save(host: Host, data: Registry) -> None:
    """Write the registry atomically (0600 root), keeping the previous copy as .bak."""
    if host.dry_run:
        return
    path = host.paths.registry
    text = json.dumps(to_json(data), indent=2, sort_keys=True) + "\n"
    previous = host.read(path)
    if previous == text:
        return
    if previous is not None:
        atomic_write(path.with_name(path.name + ".bak"), previous.encode(), 0o600)
    atomic_write(path, text.encode(), 0o600)


@contextlib.contextmanager
def flock(path, purpose: str, wait: float, what: str) -> Iterator[None]:
    """Hold an exclusive flock on path, writing purpose into it for whoever waits.
    After wait seconds, fail with a message that names the holder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SiteopsError(f"cannot open the lock {path}: {exc.strerror} (it must be a "
                           "plain file; remove it if no siteops command runs)") from exc
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 300, 0).decode(errors="replace").strip()
                    raise SiteopsError(f"{what} is locked by another siteops command "
                                       f"({holder or 'unknown'}); try again when it ends")
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {who()}, since {now()}: {purpose}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(host: Host, purpose: str, wait: float = 30) -> Iterator[Registry]:
    """Hold the registry lock and yield the loaded registry.

    A dry run takes no lock and creates nothing; it only reads."""
    if host.dry_run:
        yield load(host)
        return
    with flock(host.paths.registry_lock, purpose, wait, "the registry"):
        yield load(host)


@contextlib.contextmanager
def site_locked(host: Host, name: str, purpose: str) -> Iterator[Site]:
    """Hold site NAME's own lock for a whole deploy, rollback or restart and
    yield its registry entry as read under the lock. Fails at once if another
    command holds it (other sites are not affected), and takes no lock, and
    creates no lock file, for a site that is not in the registry."""
    get_site(load(host), name)
    if host.dry_run:
        yield get_site(load(host), name)
        return
    with flock(host.paths.site_lock(name), purpose, 0, f"site {name}"):
        yield get_site(load(host), name)


def get_site(data: Registry, name: str) -> Site:
    site = data.sites.get(name)
    if site is None:
        raise UsageError(f"no site {name!r} in the registry (add it with add-site)")
    return site


def update_site(host: Host, name: str, purpose: str, change) -> Site:
    """Apply change(site) to the registry's entry for NAME under the registry lock
    and save; return the updated entry. Used for short updates during long jobs.
    In a dry run the change is made to a copy and nothing is saved."""
    host.registry_change()
    with locked(host, purpose) as data:
        site = get_site(data, name)
        change(site)
        site.updated = now()
        save(host, data)
        return site


def allocate_slot(data: Registry, unavailable: set[int]) -> int:
    """Lowest slot that no site owns and none of whose ports is unavailable
    (listened on, or the kernel's to hand out: network.unavailable_ports)."""
    taken = {site.slot for site in data.sites.values()}
    for slot in range(units.MAX_SLOTS):
        if slot not in taken and not unavailable.intersection(units.block_ports(slot)):
            return slot
    raise SiteopsError(f"no free port block: all {units.MAX_SLOTS} slots are taken or in use "
                       "(ports listened on, or in the kernel's ephemeral range)")
