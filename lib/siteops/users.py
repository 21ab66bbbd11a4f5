"""Unix accounts: site users (nologin) and the deploy user with limited sudo."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SiteopsError
from .host import CANDIDATE, Host

NOLOGIN = "/usr/sbin/nologin"
DEPLOY_USER = "deploy"
# What the deploy user may run as root without full sudo.
DEPLOY_COMMANDS = ("deploy", "rollback", "audit", "sites", "config", "logs")


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    comment: str
    home: str
    shell: str


def lookup(host: Host, name: str) -> Account | None:
    """The passwd entry of name, or None."""
    res = host.query(["getent", "passwd", name], ok=(0, 2))
    if res.code == 2 or not res.out.strip():
        return None
    f = res.out.strip().split(":")
    return Account(f[0], int(f[2]), int(f[3]), f[4], f[5], f[6])


def group_exists(host: Host, name: str) -> bool:
    return host.query(["getent", "group", name], ok=(0, 2)).code == 0


def sudo_caller() -> str | None:
    """The user who ran this command through sudo, or None when root ran it
    (sudo sets SUDO_USER and SUDO_UID itself; a caller cannot choose them)."""
    uid, user = os.environ.get("SUDO_UID"), os.environ.get("SUDO_USER")
    return user if uid and uid != "0" and user else None


def site_comment(name: str) -> str:
    return f"siteops site {name}"


def ensure_site_user(host: Host, name: str, home: Path) -> None:
    """Create the site's nologin user and group, or correct its home and shell."""
    account = lookup(host, name)
    if account is None:
        host.run(["useradd", "--user-group", "--no-create-home", "--home-dir", home,
                  "--shell", NOLOGIN, "--comment", site_comment(name), name])
        return
    if account.comment != site_comment(name):
        raise SiteopsError(f"user {name} already exists and is not a siteops site user; "
                           "choose another site name")
    if account.home != str(home) or account.shell != NOLOGIN:
        host.run(["usermod", "--home", home, "--shell", NOLOGIN, name])


def ensure_deploy_user(host: Host) -> None:
    """Create the deploy login user (bash shell, home in /home, 0750: its
    repositories and keys are not for the sites' users to read)."""
    with host.step(f"user {DEPLOY_USER}"):
        if lookup(host, DEPLOY_USER) is None:
            host.run(["useradd", "--user-group", "--create-home", "--key", "HOME_MODE=0750",
                      "--shell", "/bin/bash", "--comment", "siteops deploy", DEPLOY_USER])


def sudoers_text(bin_dir: Path, full: bool) -> str:
    """The deploy user's sudoers drop-in: the suite's commands only, unless
    full; and the tenant keys' forced command, which reads what the tenant
    asked from SSH_ORIGINAL_COMMAND (sudo keeps that variable for it alone)."""
    tenant = bin_dir / "tenant"
    head = ("# Managed by siteops bootstrap.\n"
            f'Defaults!{tenant} env_keep += "SSH_ORIGINAL_COMMAND SSH_CONNECTION"\n')
    if full:
        return head + f"{DEPLOY_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"
    cmds = ", ".join(str(bin_dir / c) for c in (*DEPLOY_COMMANDS, "tenant"))
    return head + f"{DEPLOY_USER} ALL=(root) NOPASSWD: {cmds}\n"


def ensure_sudoers(host: Host, bin_dir: Path, full: bool) -> None:
    """Install the sudoers drop-in, checked with visudo before it takes effect."""
    path = host.paths.sudoers
    with host.step("sudo for deploy" + (" (full)" if full else f" ({', '.join(DEPLOY_COMMANDS)})")):
        host.write_checked(path, sudoers_text(bin_dir, full),
                           ["visudo", "-c", "-q", "-f", CANDIDATE], "sudoers", 0o440)


def as_user(name: str, *argv) -> list:
    """argv to run as user name: inside a site's tree root never writes itself,
    so a symlink the site planted there gains it nothing."""
    return ["runuser", "-u", name, "--", *argv]


def remove_site_user(host: Host, name: str) -> None:
    """The site's user and its group (only a site's: never a login user)."""
    with host.step(f"user {name} removed"):
        account = lookup(host, name)
        if account is not None:
            if account.shell != NOLOGIN or account.comment != site_comment(name):
                raise SiteopsError(f"user {name} is not a site's user (shell {account.shell}, "
                                   f"comment {account.comment!r}); refusing to delete it")
            host.run(["userdel", name])
        if group_exists(host, name):
            host.run(["groupdel", name])
