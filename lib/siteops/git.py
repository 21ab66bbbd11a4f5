"""A site's repository: a root-owned bare mirror per site, fetched
incrementally, from which a commit is exported into a release directory.

git runs as root so that a deploy key only root can read works; it never runs
repository code (a bare mirror has no hooks from the remote, export is
`git archive`, unpacked by the site user). URLs and refs are validated (validate.repo_url, git_ref), are
never the first argument, and transports are limited to file, https and ssh.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CommandError, SiteopsError
from .system import Host
from .users import as_user


def env(host: Host, name: str) -> dict[str, str]:
    """Environment for git: no prompts, no helper transports, the site's deploy key."""
    key = host.paths.deploy_key(name)
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
           "-o", f"UserKnownHostsFile={host.paths.etc / 'known_hosts'}"]
    if key.exists():
        ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file:https:ssh",
            "GIT_SSH_COMMAND": " ".join(ssh), "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/root"}


def _git(name: str, host: Host) -> list[str]:
    return ["git", "-c", "protocol.ext.allow=never", f"--git-dir={host.paths.mirror(name)}"]


def fetch(host: Host, name: str, url: str) -> None:
    """Bring the site's mirror up to date with url (a full clone the first time)."""
    try:
        _fetch(host, name, url)
    except CommandError as exc:
        lines = [line.strip() for line in exc.stderr.splitlines() if line.strip()]
        why = " ".join(lines[:2]) or f"git exited {exc.code}"
        key = host.paths.deploy_key(name)
        hint = "" if key.exists() else f" (a private repository needs a deploy key at {key})"
        raise SiteopsError(f"cannot fetch {url}: {why}{hint}") from exc


def _fetch(host: Host, name: str, url: str) -> None:
    mirror = host.paths.mirror(name)
    if not (mirror / "HEAD").exists():
        host.ensure_dir(mirror.parent, 0o700)
        host.run(["git", "-c", "protocol.ext.allow=never", "clone", "--mirror", "--quiet",
                  "--", url, mirror], env=env(host, name), timeout=1800)
        return
    current = host.query([*_git(name, host), "config", "--get", "remote.origin.url"],
                         ok=(0, 1)).out.strip()
    if current != url:
        host.run([*_git(name, host), "config", "remote.origin.url", url])
    host.run([*_git(name, host), "fetch", "--prune", "--quiet", "origin"],
             env=env(host, name), timeout=1800)


def resolve(host: Host, name: str, ref: str) -> str:
    """The commit a branch, tag or commit name stands for in the mirror."""
    res = host.query([*_git(name, host), "rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"{ref}^{{commit}}"], ok=(0, 1, 128))
    if res.code != 0:
        raise SiteopsError(f"ref {ref!r} is not a branch, tag or commit of the repository")
    return res.out.strip()


def show(host: Host, name: str, commit: str, path: str) -> str | None:
    """A file's text at commit, or None if the commit has no such file."""
    res = host.query([*_git(name, host), "show", f"{commit}:{path}"], ok=(0, 128))
    return res.out if res.code == 0 else None


def top_level(host: Host, name: str, commit: str) -> set[str]:
    """Names at the top of the commit's tree."""
    return set(host.query([*_git(name, host), "ls-tree", "--name-only", commit]).out.split("\n")) - {""}


def subject(host: Host, name: str, commit: str) -> str:
    return host.query([*_git(name, host), "log", "-1", "--format=%s", commit]).out.strip()


def export(host: Host, name: str, commit: str, dest: Path) -> None:
    """Write the commit's files into dest, a new directory. Everything inside the
    site's tree is done as the site user, so a planted symlink gains nothing."""
    tar = host.paths.state / "tmp" / f"{name}.tar"
    host.ensure_dir(tar.parent, 0o700)
    host.run([*_git(name, host), "archive", "--format=tar", "-o", tar, commit])
    host.run(as_user(name, "mkdir", "-m", "0750", "--", dest))
    data = b"" if host.dry_run else tar.read_bytes()
    host.run(as_user(name, "tar", "-x", "-f", "-", "-C", dest), input=data, note="the archive")
    host.remove(tar)
