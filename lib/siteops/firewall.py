"""UFW: deny incoming by default; only SSH, HTTP and HTTPS open."""

from __future__ import annotations

import re

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
    with host.step("firewall (ufw: deny incoming; 22, 80, 443 open)"):
        active, policy, allowed = status(host)
        if policy != "deny":
            host.run(["ufw", "default", "deny", "incoming"])
            host.run(["ufw", "default", "allow", "outgoing"])
        for rule in OPEN_PORTS:
            if rule not in allowed:
                host.run(["ufw", "allow", rule])
        if not active:
            host.run(["ufw", "--force", "enable"])
    return sorted(allowed - set(OPEN_PORTS))
