"""unattended-upgrades: security updates installed daily, and the processes
running the code they replaced moved onto the new code right after
(`outdated --restart`, a drop-in of apt-daily-upgrade.service)."""

from __future__ import annotations

from . import systemd
from .host import Host
from .templates import render


def ensure(host: Host) -> None:
    """Turn on the daily package list update and unattended upgrade."""
    with host.step("unattended-upgrades"):
        host.write(host.paths.auto_upgrades,
                   render("apt/20auto-upgrades"))
    dropin = host.paths.dropin("apt-daily-upgrade.service").with_name("siteops-outdated.conf")
    with host.step("after each unattended upgrade: outdated --restart"):
        systemd.write_units(host, {dropin: render("systemd/apt-daily-upgrade-outdated.conf",
                                                  bin=host.paths.install_dir / "bin")},
                            ["apt-daily-upgrade.service"], "apt-daily-upgrade drop-in")
