"""fail2ban: an sshd jail read from the journal and an nginx rate-limit jail
over every site's nginx error log; bans go through UFW."""

from __future__ import annotations

from . import systemd
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
        if outcome.changed:
            host.run(["systemctl", "enable", "fail2ban"])
            host.run(["systemctl", "restart", "fail2ban"])
        elif not systemd.is_active(host, "fail2ban"):
            host.run(["systemctl", "enable", "--now", "fail2ban"])


def reload(host: Host) -> None:
    """Make the nginx jail pick up a new site's error log."""
    if systemd.is_active(host, "fail2ban"):
        host.run(["fail2ban-client", "reload", "nginx-limit-req"])
