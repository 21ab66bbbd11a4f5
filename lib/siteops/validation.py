"""A change to some files that counts only once a check passes (`nginx -t`,
`sshd -t`, `systemd-analyze verify`, ...), as certbot's reverter does: the
paths are snapshotted first, and if the check fails, or anything stops the
change or the check (an error, Ctrl-C, SIGTERM), every path is put back.

    with host.validated([path], ["nginx", "-t"], "nginx") as change:
        host.write(path, text)
    if change.changed:
        ...reload

The put-back is not cut short by a signal (they wait for its end), a path
that cannot be put back does not stop the others, and then PutBackFailed
names each, chained to what stopped the change; `restored` says whether
every path is back."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence

from .errors import PutBackFailed, SiteopsError
from .signals import uninterrupted


class Files(Protocol):
    """What a validation needs of the host (host.Host is one): its actions so
    far, snapshots of paths and putting them back, and running the check."""
    dry_run: bool
    actions: list

    def snapshot(self, path: Path) -> tuple | None: ...
    def put_back(self, path: Path, snap: tuple | None) -> None: ...
    def query(self, argv: Sequence[str | Path], *, ok: Sequence[int] = (0,)) -> Any: ...


class Validation:
    """One checked change: use as a context manager (Host.validated)."""

    def __init__(self, host: Files, paths: Sequence[Path], check: Sequence[str | Path],
                 what: str):
        self.host, self.paths, self.what = host, list(paths), what
        self.check = [str(a) for a in check]
        self.changed = False   # the block changed something
        self.restored = False  # every path was put back after a failure or a stop
        self.snaps: dict[Path, tuple | None] = {}
        self.before = 0

    def __enter__(self) -> "Validation":
        self.snaps = {path: self.host.snapshot(path) for path in self.paths}
        self.before = len(self.host.actions)
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        try:
            if exc is None:
                self.changed = len(self.host.actions) > self.before
                if self.changed and not self.host.dry_run:
                    self.run_check()
                return False
        except BaseException as stopped:  # the check failed, or a signal came during it
            self.put_all_back(stopped)
            raise
        self.put_all_back(exc)
        return False  # what stopped the block goes on

    def run_check(self) -> None:
        """SiteopsError with the check's first error line if it fails."""
        res = self.host.query(self.check, ok=range(256))
        if res.code != 0:
            lines = (res.err or res.out).strip().splitlines() or ["no output"]
            cause = [l for l in lines if "emerg" in l or "error" in l.lower()] or lines[-1:]
            raise SiteopsError(f"{self.what}: `{shlex.join(self.check)}` failed, previous files "
                               f"restored: {cause[0]}")

    def put_all_back(self, cause: BaseException) -> None:
        """Every path back as snapshotted, SIGINT and SIGTERM held back meanwhile;
        PutBackFailed naming those that could not be."""
        failed = []
        with uninterrupted():
            for path, snap in self.snaps.items():
                try:
                    self.host.put_back(path, snap)
                except Exception as exc:  # noqa: BLE001 - each path gets its try
                    failed.append(f"{path} ({exc})")
        if failed:
            raise PutBackFailed(f"{cause or type(cause).__name__}; and these could not be put "
                                f"back as they were: {'; '.join(failed)}") from cause
        self.restored = True
