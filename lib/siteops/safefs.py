"""File changes made as root that never follow a link an unprivileged user
could have planted.

A path is walked from / one component at a time without following links,
holding a descriptor of each directory; the change is made relative to the
descriptor of its parent (openat, mkdirat, symlinkat, renameat, unlinkat) and
owners and modes are set on descriptors (fchown, fchmod). So a directory
renamed or replaced by a link half-way through cannot redirect the change.

A symlink is followed only where root put it: a root-owned link in a directory
that only root can write (/etc/letsencrypt/live/..., /var/run). Anywhere
another user can write (deploy's home, a site's releases/, /tmp) a symlink is
refused, and so is a file with a second hard link (it could be /etc/shadow
under another name) or anything that is not a regular file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import SiteopsError

MAX_LINKS = 40
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(SiteopsError):
    """A path root was asked to touch passes through a link or hard link that a
    user other than root could have made; nothing was done."""


def root_only(st: os.stat_result) -> bool:
    """True if only root can create or rename entries in this directory."""
    return st.st_uid == 0 and not st.st_mode & 0o022


def _refuse(path: Path, what: str) -> UnsafePath:
    return UnsafePath(f"refusing to touch {path}: {what} in a directory that a user other "
                      "than root can write (it could point anywhere); remove it and run again")


def _walk(path: Path, create: bool) -> tuple[int, bool]:
    """Descriptor of directory path, reached without following untrusted links,
    and whether only root can write it. Missing directories are made (0755,
    root) when create is set."""
    fd = os.open("/", _DIR)
    trusted = root_only(os.fstat(fd))
    parts = [p for p in str(path).split("/") if p not in ("", ".")]
    links = 0
    try:
        while parts:
            name = parts.pop(0)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create or name == "..":
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if not (trusted and st.st_uid == 0):
                    raise _refuse(path, f"the symlink {name}")
                links += 1
                if links > MAX_LINKS:
                    raise UnsafePath(f"{path}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = os.open("/", _DIR)
                    trusted = root_only(os.fstat(fd))
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(f"{path}: {name} is not a directory")
            child = os.open(name, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            trusted = root_only(os.fstat(fd))
        return fd, trusted
    except BaseException:
        os.close(fd)
        raise


_remembered = threading.local()


@contextlib.contextmanager
def walks_remembered() -> Iterator[None]:
    """Within it, this thread walks a directory that only root can write once
    and keeps its descriptor: audit reads thousands of files in a few hundred
    such directories (/etc/systemd/system, /etc/nginx/...), and no one but
    root can change what they hold. Directories others can write are walked
    each time, as outside it."""
    if getattr(_remembered, "fds", None) is not None:
        yield
        return
    _remembered.fds = {}
    try:
        yield
    finally:
        for fd, _ in _remembered.fds.values():
            os.close(fd)
        _remembered.fds = None


@contextlib.contextmanager
def parent(path: Path, create: bool = False) -> Iterator[tuple[int, str, bool]]:
    """(descriptor of path's directory, path's last name, only root writes it)."""
    fds = getattr(_remembered, "fds", None)
    if fds is not None and str(path.parent) in fds:
        fd, trusted = fds[str(path.parent)]
        yield fd, path.name, trusted
        return
    fd, trusted = _walk(path.parent, create)
    if fds is not None and trusted:
        fds[str(path.parent)] = (fd, trusted)
        yield fd, path.name, trusted
        return
    try:
        yield fd, path.name, trusted
    finally:
        os.close(fd)


def lstat(path: Path) -> os.stat_result | None:
    """path's own metadata (a link is not followed), or None if it is missing."""
    try:
        with parent(path) as (fd, name, _):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def open_read(path: Path, _links: int = 0) -> BinaryIO | None:
    """A regular file opened for reading, or None if it is missing."""
    if _links > MAX_LINKS:
        raise UnsafePath(f"{path}: too many levels of symbolic links")
    try:
        with parent(path) as (fd, name, trusted):
            try:
                f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                            dir_fd=fd)
            except OSError as exc:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISLNK(st.st_mode):
                    raise exc
                if not (trusted and st.st_uid == 0):
                    raise _refuse(path, f"the symlink {name}") from None
                target = os.readlink(name, dir_fd=fd)
                return open_read(Path(os.path.normpath(path.parent / target)), _links + 1)
            fh = os.fdopen(f, "rb")
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                fh.close()
                raise _refuse(path, "something that is not a regular file")
            if not trusted and st.st_nlink > 1:
                fh.close()
                raise _refuse(path, "a file with another hard link")
            return fh
    except (FileNotFoundError, NotADirectoryError):
        return None


def read(path: Path) -> bytes | None:
    """The bytes of a regular file, or None if it is missing."""
    fh = open_read(path)
    if fh is None:
        return None
    with fh:
        return fh.read()


def listdir(path: Path) -> list[str]:
    """The names in directory path, reached without following untrusted
    links ([] if it is missing)."""
    try:
        fd, _ = _walk(path, create=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def write(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Replace path with data: a temporary file in the same directory, its mode
    and owner set before the rename, file and directory fsynced; no partial
    file is ever visible and the temporary file goes on error."""
    with parent(path, create=True) as (fd, name, _):
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        f = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600, dir_fd=fd)
        try:
            os.fchmod(f, mode)
            os.fchown(f, uid, gid)
            with os.fdopen(f, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            raise
        os.fsync(fd)


def ensure_dir(path: Path, mode: int, uid: int, gid: int) -> None:
    """Make path a directory (parents as root 0755) and set its owner and mode on
    its descriptor; a link in its place is refused, never followed."""
    with parent(path, create=True) as (fd, name, trusted):
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=fd)
        try:
            d = os.open(name, _DIR, dir_fd=fd)
        except OSError as exc:
            if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                raise _refuse(path, "a symlink") from None
            raise exc
        try:
            os.fchown(d, uid, gid)
            os.fchmod(d, mode)
        finally:
            os.close(d)


def readlink(path: Path) -> str | None:
    """Where the link path points, or None if path is not a link."""
    try:
        with parent(path) as (fd, name, _):
            return os.readlink(name, dir_fd=fd)
    except OSError:  # missing, or not a link (EINVAL)
        return None


def symlink(path: Path, target: str) -> None:
    """Point the link path at target, swapped in with rename(2)."""
    with parent(path, create=True) as (fd, name, _):
        tmp = f".{name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        os.symlink(target, tmp, dir_fd=fd)
        os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)


def rename(path: Path, new_name: str) -> None:
    """Rename path to new_name in the same directory (replacing an empty
    directory or a file of that name)."""
    with parent(path) as (fd, name, _):
        os.rename(name, new_name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)


def remove(path: Path) -> None:
    """Remove a file or a link (never what it points at)."""
    with parent(path) as (fd, name, _):
        os.unlink(name, dir_fd=fd)
