"""Processes that still run replaced code: after a security update, a
program or library on disk is new, but every process that mapped the old one
keeps running it until it is restarted (the way needrestart finds them: a
mapping of /proc/PID/maps whose file was deleted or replaced). ACTIONS says
what `outdated --restart` does about each."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from .errors import SiteopsError
from .host import Host

ACTIONS = """\
  site instances and workers   moved to fresh ones through the health-gated
                               switch deploys use (no request fails)
  a site's Redis               restarted (its apps reconnect)
  nginx                        its binary upgraded in place: USR2 starts a
                               new master with the new code beside the old,
                               QUIT lets the old one finish its requests
  fail2ban, ssh, cron,         restarted (ssh: open sessions stay)
  unattended-upgrades
  PostgreSQL, anything else    reported, not restarted: a restart of
                               PostgreSQL cuts every site's connections;
                               choose the moment"""

SYSTEM_PREFIXES = ("/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/opt/")
DELETED = " (deleted)"
RESTARTED = ("fail2ban.service", "ssh.service", "cron.service", "unattended-upgrades.service")
NGINX = "nginx.service"


def replaced(maps: str) -> set[str]:
    """Files of a process's maps that were deleted or replaced on disk (the
    system's programs and libraries; not memfd, shared memory or /tmp)."""
    found = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].endswith(DELETED):
            path = fields[5][:-len(DELETED)]
            if path.startswith(SYSTEM_PREFIXES):
                found.add(path)
    return found


def unit_of(cgroup: str) -> str | None:
    """The service a process belongs to, from /proc/PID/cgroup (cgroup v2)."""
    for line in cgroup.splitlines():
        if line.startswith("0::"):
            name = line[3:].rstrip("/").rsplit("/", 1)[-1]
            return name if name.endswith(".service") else None
    return None


def scan(proc: Path = Path("/proc")) -> dict[str, list[str]]:
    """{service: [replaced file]} of every process running replaced code."""
    units: dict[str, set[str]] = {}
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            files = replaced((entry / "maps").read_text(errors="replace"))
            if not files:
                continue
            unit = unit_of((entry / "cgroup").read_text())
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if unit:
            units.setdefault(unit, set()).update(files)
    return {u: sorted(f) for u, f in sorted(units.items())}


def upgrade_nginx(host: Host, timeout: float = 20) -> None:
    """nginx onto its new binary and libraries with no connection refused:
    USR2 makes the master start a new master (the new code) that listens on
    the same sockets; once it runs, QUIT lets the old master and its workers
    finish their requests and exit. systemd follows the new master through
    nginx's PID file."""
    old = int(host.read(host.paths.nginx_pid) or "0")
    if not old:
        raise SiteopsError("nginx has no PID file: restart it with systemctl restart nginx")
    with host.step("nginx moved to its new code (binary upgrade: USR2, then QUIT)"):
        if host.dry_run:
            return
        host.run(["nginx", "-t", "-q"])
        os.kill(old, 12)  # SIGUSR2
        deadline = time.monotonic() + timeout
        new = 0
        while time.monotonic() < deadline:
            text = host.read(host.paths.nginx_pid) or ""
            new = int(text) if text.strip().isdigit() else 0
            if new and new != old:
                break
            time.sleep(0.1)
        if not new or new == old:
            raise SiteopsError("nginx did not start a new master within "
                               f"{timeout:g} s; the old one still serves")
        time.sleep(1)  # the new master's workers are up
        os.kill(old, 3)  # SIGQUIT: the old master's workers finish their requests
        while time.monotonic() < deadline and Path(f"/proc/{old}").exists():
            time.sleep(0.1)


SITE_UNIT = re.compile(r"^([a-z][a-z0-9]*)-(?:[a-z]+@[^.]+|redis)\.service$")


def site_of(unit: str) -> str | None:
    """The site a unit belongs to (NAME-COMPONENT@PORT, NAME-worker@..., NAME-redis)."""
    m = SITE_UNIT.match(unit)
    return m.group(1) if m else None
