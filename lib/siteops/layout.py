"""A site's directory tree under /srv/sites/<name>.

shared/ and shared/logs/ belong to root (group: the site) because root-run
writers open files there: nginx's logs and systemd's `append:` app logs. A
site user who owned those directories could swap a log file for a symlink to
/etc/shadow and have root append to it."""

from __future__ import annotations

from pathlib import Path

from .system import Host


def tree(host: Host, name: str) -> list[tuple[Path, int, str, str]]:
    """(path, mode, owner, group) of every directory of the site, parents first."""
    root = host.paths.site(name)
    shared = root / "shared"
    return [
        (root, 0o750, name, name),
        (root / "releases", 0o755, name, name),
        (shared, 0o750, "root", name),
        (shared / "logs", 0o750, "root", name),
        (shared / "uploads", 0o750, name, name),
        (shared / "redis", 0o700, name, name),
        (shared / "backups", 0o750, "root", name),
        (shared / "cache", 0o700, name, name),  # package caches for builds
    ]


def env_path(host: Host, name: str) -> Path:
    return host.paths.site(name) / "shared" / ".env"


def logs(host: Host, name: str) -> Path:
    return host.paths.site(name) / "shared" / "logs"


def releases(host: Host, name: str) -> Path:
    return host.paths.site(name) / "releases"


def ensure_tree(host: Host, name: str) -> None:
    with host.step(f"directories of {name}"):
        for path, mode, owner, group in tree(host, name):
            host.ensure_dir(path, mode, owner, group)
