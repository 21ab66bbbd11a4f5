"""unattended-upgrades: security updates installed daily."""

from __future__ import annotations

from .host import Host
from .templates import render


def ensure(host: Host) -> None:
    """Turn on the daily package list update and unattended upgrade."""
    with host.step("unattended-upgrades"):
        host.write(host.paths.auto_upgrades,
                   render("apt/20auto-upgrades"))
