"""A site's directory tree under /srv/sites/<name>.

The site root, shared/ and shared/logs/ belong to root (group: the site)
because root-run writers open files there: `current`, `.env`, nginx's logs and
systemd's `append:` app logs. A site user who owned any of those directories
(or an ancestor of them) could rename it away and put a symlink to /etc in its
place for root's next pass to follow. What the site user owns (releases/,
uploads/, redis/, cache/) is never an ancestor of a path root writes."""

from __future__ import annotations

from pathlib import Path

from .host import Host


def tree(host: Host, name: str) -> list[tuple[Path, int, str, str]]:
    """(path, mode, owner, group) of every directory of the site, parents first."""
    p = host.paths.of(name)
    return [
        (p.root, 0o750, "root", name),
        (p.releases, 0o755, name, name),
        (p.shared, 0o750, "root", name),
        (p.logs, 0o750, "root", name),
        (p.uploads, 0o750, name, name),
        (p.redis, 0o700, name, name),
        (p.backups, 0o750, "root", name),
        (p.cache, 0o700, name, name),  # package caches for builds
    ]


def ensure_tree(host: Host, name: str) -> None:
    with host.step(f"directories of {name}"):
        for path, mode, owner, group in tree(host, name):
            host.ensure_dir(path, mode, owner, group)
