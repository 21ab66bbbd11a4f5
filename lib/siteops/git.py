"""A site's repository: a root-owned bare mirror per site, fetched
incrementally, from which a commit is exported into a release directory.

git runs as root so that a deploy key only root can read works, but with no
identity of root's: no global or system git config, HOME in the suite's
root-only state directory, `ssh -F /dev/null` with only the site's own deploy
key and no agent. It never runs repository code (a bare mirror has no hooks
from the remote, export is `git archive`, unpacked by the site user). URLs
and refs are validated (validate.repo_url, git_ref), are never the first
argument, and transports are limited to file, https and ssh.

Through sudo (the deploy user), a local repository must lie under a directory
the operator listed in /etc/siteops/repo-dirs, and it is read with the
caller's own permissions (git-upload-pack runs as the caller), so the deploy
user can never publish a file it could not read itself. One that root owns
is named safe.directory for that read (git would refuse a repository of
another owner); one of any other user but the caller is refused by git.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from .errors import CommandError, SiteopsError, UsageError
from .host import Host, clean
from .users import as_user, sudo_caller


def env(host: Host, name: str) -> dict[str, str]:
    """Environment for git: no prompts, no helper transports, no config or SSH
    identity of root's; the site's deploy key if it has one."""
    key = host.paths.deploy_key(name)
    ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentityAgent=none",
           "-o", "StrictHostKeyChecking=accept-new",
           "-o", f"UserKnownHostsFile={host.paths.etc / 'known_hosts'}"]
    if key.exists():
        ssh += ["-o", "IdentitiesOnly=yes", "-i", str(key)]
    else:
        ssh += ["-o", "PubkeyAuthentication=no"]
    home = str(host.paths.state)
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "file:https:ssh",
            "GIT_SSH_COMMAND": " ".join(ssh), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": home, "XDG_CONFIG_HOME": home,
            "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false", "SSH_AUTH_SOCK": ""}


def _git(name: str, host: Host) -> list[str]:
    return ["git", "-c", "protocol.ext.allow=never", f"--git-dir={host.paths.mirror(name)}"]


def local_path(url: str) -> str | None:
    """The directory a local repository URL names, or None for a remote one."""
    if url.startswith("file://"):
        return url[len("file://"):]
    return url if url.startswith("/") else None


def repo_dirs(host: Host) -> list[str]:
    """Directories the operator allows local repositories in for sudo callers."""
    text = host.read(host.paths.etc / "repo-dirs") or ""
    return [line.strip().rstrip("/") for line in text.splitlines()
            if line.strip().startswith("/")]


def check_allowed(host: Host, url: str) -> None:
    """Refuse a local repository outside the allowed directories when the
    command runs through sudo for another user (UsageError, nothing changed)."""
    path, caller = local_path(url), sudo_caller()
    if path is None or caller is None:
        return
    real = os.path.realpath(path)
    if not any(real == d or real.startswith(d + "/") for d in repo_dirs(host)):
        raise UsageError(
            f"repository {url}: through sudo a local repository must be under a directory "
            f"listed in {host.paths.etc / 'repo-dirs'} (root adds one with bootstrap "
            "--repo-dir DIR); otherwise use a remote URL")


def _upload_pack(url: str) -> list[str]:
    """git options that read a local repository as the sudo caller, not as
    root. git refuses to read a repository another user owns ("dubious
    ownership"); one of root's (the operator's, in a directory root listed)
    is named safe for that one read, under the names git may compare."""
    caller, path = sudo_caller(), local_path(url)
    if caller is None or path is None:
        return []
    program = "git-upload-pack"
    real = os.path.realpath(path)
    if _owner(real) == 0:
        # git names a repository with a work tree by its .git directory.
        given = path.rstrip("/") or "/"
        names = dict.fromkeys([given, real, *(f"{p}/.git" for p in (given, real)
                                              if os.path.isdir(f"{p}/.git"))])
        program = "git " + " ".join(f"-c safe.directory={shlex.quote(n)}" for n in names) \
            + " upload-pack"
    return [f"--upload-pack=runuser -u {caller} -- {program}"]


def _owner(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def fetch(host: Host, name: str, url: str) -> None:
    """Bring the site's mirror up to date with url (a full clone the first time)."""
    check_allowed(host, url)
    try:
        _fetch(host, name, url)
    except CommandError as exc:
        lines = [line.strip() for line in clean(exc.stderr).splitlines() if line.strip()]
        why = " ".join(lines[:2]) or f"git exited {exc.code}"
        raise SiteopsError(f"cannot fetch {url}: {why}{fetch_hint(host, name, url, exc.stderr)}"
                           ) from exc


def fetch_hint(host: Host, name: str, url: str, stderr: str) -> str:
    """What the caller can do about a failed fetch."""
    path, caller = local_path(url), sudo_caller()
    if path is not None and caller is not None:
        owner = _owner(os.path.realpath(path))
        if "dubious ownership" in stderr:
            return (f" (the repository is read as {caller}, and git reads no repository "
                    f"another user owns (uid {owner}): root must own it, or {caller})")
        return (f" (the repository is read as {caller}: it and everything in it must be "
                f"readable by {caller})")
    if path is not None:
        return ""
    key = host.paths.deploy_key(name)
    return "" if key.exists() else f" (a private repository needs a deploy key at {key})"


def _fetch(host: Host, name: str, url: str) -> None:
    mirror = host.paths.mirror(name)
    if not (mirror / "HEAD").exists():
        host.ensure_dir(mirror.parent, 0o700)
        # --no-local: copy objects, never hard-link another user's files into the mirror.
        host.run(["git", "-c", "protocol.ext.allow=never", "clone", "--mirror", "--no-local",
                  "--quiet", *_upload_pack(url), "--", url, mirror],
                 env=env(host, name), timeout=1800)
        return
    current = host.query([*_git(name, host), "config", "--get", "remote.origin.url"],
                         ok=(0, 1), env=env(host, name)).out.strip()
    if current != url:
        host.run([*_git(name, host), "config", "remote.origin.url", url], env=env(host, name))
    host.run([*_git(name, host), "fetch", "--prune", "--quiet", *_upload_pack(url), "origin"],
             env=env(host, name), timeout=1800)


# The repository of a site deployed by `git push` (a tenant key): the mirror
# is what was pushed, and nothing is fetched.
PUSHED = "push"


# A dry run does not fetch: a ref the mirror does not have yet stands for this
# commit, which has no files (so the plan shows the defaults of an empty tree).
UNFETCHED = "0" * 40


def resolve(host: Host, name: str, ref: str) -> str:
    """The commit a branch, tag or commit name stands for in the mirror."""
    res = host.query([*_git(name, host), "rev-parse", "--verify", "--quiet", "--end-of-options",
                      f"{ref}^{{commit}}"], ok=range(256), env=env(host, name))
    if res.code == 0:
        return res.out.strip()
    if host.dry_run:
        host.say(f"{'':13}(dry run: {ref} is not in the mirror before the fetch runs; the "
                 "plan below assumes a commit with no siteops.toml)")
        return UNFETCHED
    raise SiteopsError(f"ref {ref!r} is not a branch, tag or commit of the repository")


def show(host: Host, name: str, commit: str, path: str) -> str | None:
    """A file's text at commit, or None if the commit has no such file."""
    res = host.query([*_git(name, host), "show", f"{commit}:{path}"], ok=(0, 128),
                     env=env(host, name))
    return res.out if res.code == 0 else None


def top_level(host: Host, name: str, commit: str) -> set[str]:
    """Names at the top of the commit's tree."""
    res = host.query([*_git(name, host), "ls-tree", "--name-only", commit], env=env(host, name),
                     ok=(0, 128) if commit == UNFETCHED else (0,))
    return set(res.out.split("\n")) - {""} if res.code == 0 else set()


def subject(host: Host, name: str, commit: str) -> str:
    """The commit's subject line, control characters removed (it is printed)."""
    res = host.query([*_git(name, host), "log", "-1", "--format=%s", commit], env=env(host, name),
                     ok=(0, 128) if commit == UNFETCHED else (0,))
    return clean(res.out.strip())


def export(host: Host, name: str, commit: str, dest: Path) -> None:
    """Write the commit's files into dest, a new directory. Everything inside the
    site's tree is done as the site user, so a planted symlink gains nothing."""
    tar = host.paths.state / "tmp" / f"{name}.tar"
    host.ensure_dir(tar.parent, 0o700)
    host.run([*_git(name, host), "archive", "--format=tar", "-o", tar, commit], env=env(host, name))
    host.run(as_user(name, "mkdir", "-m", "0750", "--", dest))
    data = b"" if host.dry_run else tar.read_bytes()
    host.run(as_user(name, "tar", "-x", "-f", "-", "-C", dest), input=data, note="the archive")
    host.remove(tar)
