"""sshd: key-only login, validated with `sshd -t`, never locking the operator out."""

from __future__ import annotations

from pathlib import Path

from .errors import SiteopsError, UsageError
from . import systemd
from .host import Host
from .templates import render

KEY_TYPES = ("ssh-", "ecdsa-", "sk-ssh-", "sk-ecdsa-")


def has_key(text: str | None) -> bool:
    """True if an authorized_keys text holds at least one public key line."""
    for line in (text or "").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and any(t in line for t in KEY_TYPES):
            return True
    return False


def authorized_keys(host: Host, home: str) -> Path:
    return host.paths.authorized_keys(home)


def ensure_deploy_keys(host: Host, deploy_home: str, key_file: Path | None) -> None:
    """Add keys to deploy's authorized_keys: those of key_file, or root's when
    deploy has none. Keys already there are kept."""
    target = authorized_keys(host, deploy_home)
    current = host.read(target) or ""
    if key_file is not None:
        source = host.read(key_file)
    else:
        source = "" if has_key(current) else host.read(authorized_keys(host, "/root"))
    have = {line.strip() for line in current.splitlines()}
    new = [line.strip() for line in (source or "").splitlines()
           if has_key(line) and line.strip() not in have]
    with host.step("ssh keys for deploy"):
        if new or current:
            host.ensure_dir(target.parent, 0o700, "deploy", "deploy")
            text = current + ("\n" if current and not current.endswith("\n") else "")
            host.write(target, text + "".join(f"{k}\n" for k in new), 0o600, "deploy", "deploy")


def preflight(host: Host, deploy_home: str, key_file: Path | None, allow_lockout: bool) -> None:
    """Refuse, before any change, to turn off passwords when no key could log in."""
    keys = [authorized_keys(host, "/root"), authorized_keys(host, deploy_home)]
    if key_file is not None:
        if not has_key(host.read(key_file)):
            raise UsageError(f"--deploy-key {key_file}: no SSH public key in it")
        return
    if not allow_lockout and not any(has_key(host.read(k)) for k in keys):
        raise SiteopsError(
            "refusing to disable SSH passwords: neither root nor deploy has an authorized "
            "key, so nobody could log in afterwards; nothing was changed. Add a key to "
            "/root/.ssh/authorized_keys or pass --deploy-key FILE (or --allow-ssh-lockout "
            "if you really mean it)")


def ensure_key_only(host: Host) -> None:
    """Install the key-only sshd drop-in, `sshd -t` first, then reload sshd."""
    path = host.paths.sshd_conf
    with host.step("sshd key-only login"):
        with host.validated([path], ["sshd", "-t"], "sshd") as outcome:
            host.write(path, render("ssh/sshd_siteops.conf"), 0o644)
        if not outcome.changed:
            return
        # On Ubuntu 24.04 sshd is socket-activated: each connection reads the
        # config anew and ssh.service may be inactive, so reload only if running.
        for unit in ("ssh.service", "sshd.service"):
            if systemd.is_active(host, unit):
                host.run(["systemctl", "reload", unit])
                break
