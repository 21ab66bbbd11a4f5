"""Sockets on this server, read with `ss`: what listens, what is still connected."""

from __future__ import annotations

from .system import Host


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
