"""Sockets on this server, read with `ss`: what listens (and which systemd unit
holds it), what is still connected."""

from __future__ import annotations

import re
from pathlib import Path

from .host import Host


def _port(address: str) -> int | None:
    port = address.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def listening_ports(host: Host) -> set[int]:
    """TCP ports something listens on, from one `ss` call."""
    out = host.query(["ss", "-H", "-t", "-l", "-n"]).out
    fields = (line.split() for line in out.splitlines())
    return {p for f in fields if len(f) >= 4 and (p := _port(f[3])) is not None}


def connections_to(host: Host, ports: list[int]) -> int:
    """Established TCP connections whose local port is one of ports."""
    if not ports:
        return 0
    match = " or ".join(f"sport = :{p}" for p in ports)
    out = host.query(["ss", "-H", "-t", "-n", "state", "established", f"( {match} )"]).out
    return len(out.splitlines())


def listeners(host: Host) -> list[dict]:
    """Every listening TCP/UDP socket: protocol, address, port, and the systemd
    unit of each process holding it (from /proc/PID/cgroup)."""
    out = host.query(["ss", "-H", "-t", "-u", "-l", "-n", "-p"]).out
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        port = _port(fields[4])
        if port is None:
            continue
        addr = fields[4].rpartition(":")[0]
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        found.append({"proto": fields[0], "addr": addr.strip("[]").split("%")[0],
                      "port": port, "units": sorted({unit_of(p) for p in pids} - {""}),
                      "programs": sorted(set(re.findall(r'\(\("([^"]+)"', line)))})
    return found


def unit_of(pid: int) -> str:
    """The systemd unit a process runs in (last part of its cgroup path)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
    path = text.strip().splitlines()[-1].rpartition(":")[2]
    return path.rstrip("/").rpartition("/")[2]


def holders(host: Host, port: int) -> list[dict]:
    """The listeners on TCP port (any address), each with its units and programs."""
    return [l for l in listeners(host) if l["port"] == port and l["proto"] == "tcp"]


def describe_holders(found: list[dict]) -> str:
    """'blog-rogue.service (python3)' for each holder, for an error message."""
    return ", ".join(f"{'/'.join(l['units']) or 'no unit'} ({'/'.join(l['programs']) or '?'})"
                     for l in found) or "nothing"
