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


def unavailable_ports(host: Host) -> set[int]:
    """Ports a new slot may not take: those something listens on, and those
    the kernel may give an outgoing connection (its ephemeral range, less the
    ports reserved from it: bootstrap reserves siteops's second range)."""
    return listening_ports(host) | ephemeral_ports(host)


def ephemeral_ports(host: Host) -> set[int]:
    """The ports of the kernel's ephemeral range that are not reserved."""
    proc = Path(host.paths.p("/proc/sys/net/ipv4"))
    try:
        low, high = map(int, (proc / "ip_local_port_range").read_text().split())
        reserved = (proc / "ip_local_reserved_ports").read_text().strip()
    except (OSError, ValueError):
        return set()  # no such kernel file (a test root): nothing known to avoid
    return set(range(low, high + 1)) - port_list(reserved)


def port_list(text: str) -> set[int]:
    """The ports of a list such as the kernel's ip_local_reserved_ports.

    >>> sorted(port_list("10-12,20"))
    [10, 11, 12, 20]
    """
    ports: set[int] = set()
    for item in filter(None, (i.strip() for i in text.split(","))):
        first, _, last = item.partition("-")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


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
