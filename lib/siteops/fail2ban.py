"""fail2ban: an sshd jail read from the journal and an nginx rate-limit jail
over every site's nginx error log; bans go through UFW."""

from __future__ import annotations

import time
from pathlib import Path

from . import systemd
from .errors import CommandError
from .host import Host
from .templates import render

JAILS = ("sshd", "nginx-limit-req")


def ensure(host: Host) -> None:
    """Install the jail settings, checked with `fail2ban-client -t`, and run fail2ban."""
    path = host.paths.fail2ban_jail
    with host.step("fail2ban (sshd, nginx-limit-req)"):
        with host.validated([path], ["fail2ban-client", "-t"], "fail2ban") as outcome:
            host.write(path, render("fail2ban/jail.local",
                                         site_error_logs=host.paths.of("*").nginx_error_log))
        running = answering(host)
        if outcome.changed or not running:
            host.run(["systemctl", "enable", "fail2ban"])
        if not running:
            host.run(["systemctl", "reset-failed", "fail2ban"])
            host.run(["systemctl", "restart", "fail2ban"])
        elif outcome.changed:
            host.run(["fail2ban-client", "reload", "--restart", "--all"])


def answering(host: Host, timeout: float = 60) -> bool:
    """True once a running fail2ban answers on its socket, which it opens a
    moment after its unit is active. The jails are reloaded in place rather
    than the server restarted: a restart before the socket is there cannot
    stop the server (its ExecStop is a fail2ban-client), and one soon after
    the boot's start can meet systemd's start limit."""
    if not systemd.is_active(host, "fail2ban"):
        return False
    deadline = time.monotonic() + timeout
    while host.query(["fail2ban-client", "ping"], ok=range(256)).code != 0:
        if time.monotonic() > deadline or not systemd.is_active(host, "fail2ban"):
            return False
        time.sleep(0.2)
    return True


def watch(host: Host, log: Path) -> None:
    """Make the running nginx jail follow a site's error log: added to the jail
    in place (one call, whatever the number of sites; the jail's glob names
    the file from its next start on). If fail2ban does not take it (still
    opening its socket), the jail is reloaded once it answers. A stopped
    fail2ban is left stopped: its start reads the glob. A log the jail
    already follows stays followed (fail2ban logs that it "already exists")."""
    if not systemd.is_active(host, "fail2ban"):
        return
    try:
        host.run(["fail2ban-client", "set", "nginx-limit-req", "addlogpath", log, "tail"])
    except CommandError:
        reload(host)


def reload(host: Host) -> None:
    """Make the nginx jail read its files again (a site's error log gone)."""
    if answering(host):
        host.run(["fail2ban-client", "reload", "nginx-limit-req"])
