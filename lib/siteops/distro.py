"""Facts about the operating system: which distribution, which versions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SiteopsError
from .host import Host

# Supported releases and the PostgreSQL major each ships.
SUPPORTED = {("ubuntu", "24.04"): 16, ("debian", "12"): 15, ("debian", "13"): 17}


@dataclass(frozen=True)
class Distro:
    id: str
    version: str
    pg_major: int

    @property
    def label(self) -> str:
        return f"{self.id} {self.version}"


def parse_os_release(text: str) -> dict[str, str]:
    """Parse /etc/os-release KEY=value lines."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def detect(host: Host) -> Distro:
    """Read /etc/os-release; refuse anything siteops does not support."""
    fields = parse_os_release(host.read(host.paths.os_release) or "")
    key = (fields.get("ID", "?"), fields.get("VERSION_ID", "?"))
    if key not in SUPPORTED:
        names = ", ".join(f"{i} {v}" for i, v in SUPPORTED)
        raise SiteopsError(f"unsupported system {fields.get('PRETTY_NAME', ' '.join(key))}: "
                           f"siteops supports {names}")
    return Distro(key[0], key[1], SUPPORTED[key])


def nginx_version(host: Host) -> tuple[int, ...]:
    """The installed nginx version, from `nginx -v` (printed on stderr)."""
    res = host.query(["nginx", "-v"])
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", res.err + res.out)
    if not match:
        raise SiteopsError(f"cannot tell the nginx version from: {(res.err + res.out).strip()}")
    return tuple(int(x) for x in match.groups())
