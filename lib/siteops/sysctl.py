"""Kernel settings of a hardened web host (templates/sysctl/90-siteops.conf),
applied at bootstrap and at every boot by systemd-sysctl; audit compares the
running values with the file.

A container (the nspawn test box) has a read-only /proc/sys and the host's
kernel: the file is written there but not applied, and audit does not check
it; the VM tier proves the values."""

from __future__ import annotations

from pathlib import Path

from . import units
from .host import Host
from .paths import Paths
from .templates import render

CONF = str(Paths().sysctl_conf)  # as the server names it (ufw's IPT_SYSCTL)


def conf_text() -> str:
    """The baseline file, with siteops's second port range reserved."""
    first, last = units.SECOND_RANGE
    return render("sysctl/90-siteops.conf", reserved_ports=f"{first}-{last}")


def baseline(text: str | None = None) -> dict[str, str]:
    """{key: value} of the baseline file (text: as already rendered)."""
    values = {}
    for line in (text or conf_text()).splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            values[key] = value
    return values


def in_container(host: Host) -> bool:
    return host.query(["systemd-detect-virt", "--container"], ok=range(256)).code == 0


def running(host: Host, keys) -> dict[str, str | None]:
    """The kernel's current value of each key (None if it has no such setting)."""
    values: dict[str, str | None] = {}
    for key in keys:
        try:
            text = (Path(host.paths.p("/proc/sys")) / key.replace(".", "/")).read_text()
            values[key] = " ".join(text.split())
        except OSError:
            values[key] = None
    return values


def facts(host: Host) -> dict:
    """{want: baseline, have: running values} for audit."""
    want = baseline()
    return {"want": want, "have": running(host, want)}


def ensure(host: Host) -> None:
    """Write the baseline and apply it (outside a container)."""
    with host.step(f"kernel settings ({CONF})"):
        text = conf_text()
        changed = host.write(host.paths.sysctl_conf, text)
        if in_container(host):
            return
        want = baseline(text)
        if changed or running(host, want) != want:
            host.run(["sysctl", "-q", "-e", "-p", host.paths.sysctl_conf])  # -e: keys a kernel lacks
