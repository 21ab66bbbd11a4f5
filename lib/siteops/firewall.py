"""UFW: deny incoming by default; only SSH, HTTP and HTTPS open (and, on
the fleet's log host, its receiver's port: fleetlogs.py)."""

from __future__ import annotations

import re

from . import fleetlogs
from .host import Host

OPEN_PORTS = ("22/tcp", "80/tcp", "443/tcp")


def status(host: Host) -> tuple[bool, str, set[str]]:
    """(active, default incoming policy, allowed port rules) from `ufw status verbose`."""
    out = host.query(["ufw", "status", "verbose"]).out
    active = "Status: active" in out
    policy = re.search(r"Default: (\w+) \(incoming\)", out)
    allowed = set()
    for line in out.splitlines():
        m = re.match(r"(\S+)\s+ALLOW IN\s+Anywhere\s*$", line.strip())
        if m:
            allowed.add(m.group(1))
    return active, (policy.group(1) if policy else "unknown"), allowed


def ensure(host: Host) -> list[str]:
    """Converge UFW; return allowed rules that siteops did not open (left alone)."""
    rules = open_ports(host)
    with host.step(f"firewall (ufw: deny incoming; {', '.join(r.split('/')[0] for r in rules)} "
                   "open)"):
        active, policy, allowed = status(host)
        if policy != "deny":
            host.run(["ufw", "default", "deny", "incoming"])
            host.run(["ufw", "default", "allow", "outgoing"])
        for rule in rules:
            if rule not in allowed:
                host.run(["ufw", "allow", rule])
        if not active:
            host.run(["ufw", "--force", "enable"])
    return sorted(allowed - set(rules))


def open_ports(host: Host) -> tuple[str, ...]:
    """The rules siteops opens: SSH, HTTP, HTTPS, and the log host's receiver."""
    _, receive = fleetlogs.load(host)
    return OPEN_PORTS + ((f"{receive.port}/tcp",) if receive else ())
