"""The one place that runs commands and changes files.

`Host` is the seam between the suite and the server. Facts are read with
`query` (always executed, also in a dry run); changes go through `run`,
`write`, `ensure_dir`, `symlink` and `remove`, which in a dry run are only
printed and recorded. Unit tests give Host a fake runner and read the
recorded plan from `Host.actions`.
"""

from __future__ import annotations

import contextlib
import ctypes
import grp
import os
import pwd
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence, TextIO

from .errors import CommandError, SiteopsError
from . import safefs
from .paths import Paths
from .validation import Validation

REDACTED = "********"
CANDIDATE = "{candidate}"  # Host.write_checked: the candidate file in a check's argv
# Every command runs with the full system PATH: cron's (/usr/bin:/bin) has no
# nginx, sshd or ufw, and the caller's PATH should not choose our programs.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STREAM_TAIL = 25  # lines of a failed build shown again in its error


@dataclass
class Result:
    argv: list[str]
    code: int
    out: str = ""
    err: str = ""


# C0 and C1 control characters (terminal escapes, carriage returns), keeping
# tabs and newlines: whatever a repository, a build or an app wrote is data.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """text without control characters, safe to print on an operator's terminal."""
    return _CONTROL.sub("", text)


# Secrets recognised by their shape, whether or not they are known: a
# password in a URL, Redis's requirepass/masterauth, KEY=VALUE settings whose
# key names a secret (a hand-edited config may hold a password .env does not).
_SECRET_SHAPES = [
    (re.compile(r"(://[^:/@\s]*:)[^@\s]+@"), rf"\g<1>{REDACTED}@"),
    (re.compile(r"(?im)^([-+ ]?\s*(?:requirepass|masterauth)\s+)\S+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?im)^([-+ ]?\s*(?:export\s+)?[A-Z0-9_]*(?:SECRET|PASSWORD|PASSWD|TOKEN|"
                r"API_KEY|PRIVATE_KEY)[A-Z0-9_]*\s*=\s*)\S.*$"), rf"\g<1>{REDACTED}"),
]


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Return text with every known secret, and anything shaped like one, masked."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    for pattern, mask in _SECRET_SHAPES:
        text = pattern.sub(mask, text)
    return text


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a child, before exec: SIGKILL when siteops dies, even by kill -9 (in a
    session of its own, a kill of siteops's process group no longer reaches it,
    and an orphan would race the run that finishes the job)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # siteops died before the request took effect
        os._exit(137)


def run_command(argv: Sequence[str | Path], input: str | bytes | None = None, timeout: float = 600,
                env: dict[str, str] | None = None,
                stream: Callable[[str], None] | None = None) -> Result:
    """Execute argv (no shell) with LC_ALL=C and a timeout; never raises on failure.
    With stream, stdout and stderr are merged and each line is passed to it as it
    arrives (a build's progress); the result then holds the whole output. The
    child runs in a session of its own: a Ctrl-C at the terminal reaches only
    siteops, which kills the child it waits for and then puts back what it must
    (a put-back's own commands are not cut short by a second Ctrl-C); and it is
    killed if siteops dies."""
    args = [str(a) for a in argv]
    full_env = {**os.environ, "LC_ALL": "C", "PATH": PATH, **(env or {})}
    if stream is not None:
        return _run_streaming(args, input, timeout, full_env, stream)
    binary = isinstance(input, bytes)  # e.g. an archive piped to tar
    try:
        proc = subprocess.run(args, input=input, capture_output=True, text=not binary,
                              timeout=timeout, env=full_env, start_new_session=True,
                              preexec_fn=_die_with_parent)
    except FileNotFoundError:
        return Result(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(args, 124, "", f"timed out after {timeout:g}s")
    if binary:
        return Result(args, proc.returncode, proc.stdout.decode(errors="replace"),
                      proc.stderr.decode(errors="replace"))
    return Result(args, proc.returncode, proc.stdout, proc.stderr)


def _run_streaming(argv: list[str], input: str | bytes | None, timeout: float, env: dict,
                   stream: Callable[[str], None]) -> Result:
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    except FileNotFoundError:
        return Result(argv, 127, "", f"{argv[0]}: command not found")
    assert proc.stdout is not None
    if input is not None and proc.stdin is not None:
        proc.stdin.write(input if isinstance(input, str) else input.decode())
        proc.stdin.close()
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, expire)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            stream(line.rstrip("\n"))
        code = proc.wait()
    except BaseException:  # interrupted: the child, in a session of its own, goes too
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        return Result(argv, 124, "".join(lines), f"timed out after {timeout:g}s")
    return Result(argv, code, "".join(lines), "")


Runner = Callable[..., Result]


@dataclass(frozen=True)
class Action:
    """One change a Host made, or in a dry run would make.

    kind    run | write | mkdir | chmod | symlink | rename | remove | wait
    path    the file, directory or link (write, mkdir, chmod, symlink, rename, remove)
    argv    the command (run)
    detail  mode and owner, a link's target, what a command's stdin holds, or
            what a wait waits for (never a secret)
    """
    kind: str
    detail: str = ""
    path: str = ""
    argv: tuple[str, ...] = ()

    def __str__(self) -> str:
        """One line, as a dry run prints it."""
        if self.kind == "run":
            return "+ " + shlex.join(self.argv) + (f"  <<< {self.detail}" if self.detail else "")
        if self.kind == "symlink":
            return f"symlink {self.path} -> {self.detail}"
        if self.kind == "rename":
            return f"rename {self.path} -> {self.detail}"
        if self.kind == "wait":
            return f"wait {self.detail}"
        return f"{self.kind} {self.path}" + (f" ({self.detail})" if self.detail else "")


def atomic_write(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Replace path with data atomically, mode and owner set first (safefs.write)."""
    safefs.write(path, data, mode, uid, gid)


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def gid_of(group: str) -> int:
    return grp.getgrnam(group).gr_gid


# Test-only: SITEOPS_KILL_AFTER_STEP=K makes a command send itself a signal
# right after its K-th step: SIGKILL, as a crash or `kill -9` would, or the
# one SITEOPS_KILL_SIGNAL names (INT: Ctrl-C, TERM: systemd stopping it).
# SITEOPS_KILL_BEFORE_CHANGE=K sends it just before the K-th change of the
# registry instead: between two steps, where a switch's commit stands.
# tests/box/test_crash.py interrupts every command at every such point.
KILL_AFTER_STEP, KILL_SIGNAL = "SITEOPS_KILL_AFTER_STEP", "SITEOPS_KILL_SIGNAL"
KILL_BEFORE_CHANGE = "SITEOPS_KILL_BEFORE_CHANGE"


def crash_point(switch: str, count: int) -> None:
    if os.environ.get(switch) == str(count):
        os.kill(os.getpid(), signal.Signals["SIG" + os.environ.get(KILL_SIGNAL, "KILL")])


@dataclass
class Host:
    """Facts and changes on one server (or, in a dry run, the plan of them)."""

    runner: Runner = run_command
    dry_run: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    paths: Paths = field(default_factory=Paths)
    actions: list[Action] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)
    changed_steps: list[str] = field(default_factory=list)
    unchanged_steps: list[str] = field(default_factory=list)
    trace: TextIO | None = None  # --trace: where the time goes, to stderr
    started: float = field(default_factory=time.monotonic)
    registry_changes: int = 0

    # -- reporting ---------------------------------------------------------

    def say(self, line: str) -> None:
        """Print one line of progress."""
        print(line, file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Group the changes of one item and report it changed or ok."""
        before, t0 = len(self.actions), time.monotonic()
        yield
        self.traced(f"step {label}", t0)
        if len(self.actions) > before:
            self.changed_steps.append(label)
            verb = "would change" if self.dry_run else "changed"
            self.say(f"{verb:<13}{label}")
            for action in self.actions[before:]:
                self.say(" " * 15 + str(action))
        else:
            self.unchanged_steps.append(label)
            self.say(f"{'ok':<13}{label}")
        crash_point(KILL_AFTER_STEP, len(self.changed_steps) + len(self.unchanged_steps))

    def registry_change(self) -> None:
        """Count a change of the registry about to be made (a test-only crash point)."""
        self.registry_changes += 1
        crash_point(KILL_BEFORE_CHANGE, self.registry_changes)

    def traced(self, what: str, since: float) -> None:
        """With --trace: one line, seconds since the command started and how
        long this took (a step, a command, a wait)."""
        if self.trace:
            now = time.monotonic()
            print(f"{now - self.started:8.3f} {now - since:7.3f}  {what}", file=self.trace,
                  flush=True)

    def traced_command(self, args: list[str], secrets: Sequence[str], since: float) -> None:
        """traced() for a command, its secrets masked; composed only with --trace
        (every command passes here)."""
        if self.trace:
            self.traced("$ " + redact(shlex.join(args), secrets), since)

    def summary(self) -> str:
        n = len(self.changed_steps)
        if self.dry_run:
            return f"dry run: {n} item(s) would change, nothing was changed"
        if n == 0:
            return f"nothing changed ({len(self.unchanged_steps)} items ok)"
        return f"{n} item(s) changed, {len(self.unchanged_steps)} ok"

    def waits(self, what: str) -> bool:
        """Record a wait on the server (health polling, draining); True if the
        caller should really wait, False in a dry run, where it is only shown."""
        self.actions.append(Action("wait", what))
        return not self.dry_run

    # -- commands ----------------------------------------------------------

    def query(self, argv: Sequence[str | Path], *, input: str | None = None, ok: Sequence[int] = (0,),
              timeout: float = 120, secrets: Sequence[str] = (), env: dict | None = None) -> Result:
        """Run a read-only command (also in a dry run); raise unless its code is in ok."""
        args, t0 = [str(a) for a in argv], time.monotonic()
        result = self.runner(args, input=input, timeout=timeout, env=env)
        self.traced_command(args, secrets, t0)
        if result.code not in ok:
            raise CommandError(result.argv, result.code, redact(result.err or result.out, secrets))
        return result

    def run(self, argv: Sequence[str | Path], *, input: str | bytes | None = None, timeout: float = 900,
            secrets: Sequence[str] = (), env: dict | None = None, note: str = "",
            stream: bool = False) -> Result:
        """Run a command that changes the server; in a dry run only record it.
        note (never a secret) says what its standard input does. With stream (a
        build), its output is printed indented as it comes and a failure carries
        its last STREAM_TAIL lines."""
        args = [str(a) for a in argv]
        self.actions.append(Action("run", note, argv=tuple(args)))
        if self.dry_run:
            return Result(args, 0)
        printer = {"stream": lambda line: self.say("    " + clean(line))} if stream else {}
        t0 = time.monotonic()
        result = self.runner(args, input=input, timeout=timeout, env=env, **printer)
        self.traced_command(args, secrets, t0)
        if result.code != 0:
            if stream:
                detail = clean("\n".join((result.out or result.err).rstrip("\n")
                                         .splitlines()[-STREAM_TAIL:]))
            else:
                detail = result.err or result.out
            raise CommandError(args, result.code, redact(detail, secrets))
        return result

    # -- files -------------------------------------------------------------

    def read(self, path: Path) -> str | None:
        """Return a file's text, or None when it does not exist (safefs: no
        planted link or hard link is followed)."""
        data = safefs.read(path)
        return None if data is None else data.decode()

    def _meta_differs(self, st: os.stat_result, mode: int, owner: str, group: str) -> bool:
        try:
            return (st.st_mode & 0o7777, st.st_uid, st.st_gid) != (mode, uid_of(owner), gid_of(group))
        except KeyError:  # owner not created yet (only possible in a dry run)
            return True

    def write(self, path: Path, text: str, mode: int = 0o644, owner: str = "root",
              group: str = "root") -> bool:
        """Make path hold text with mode and owner, atomically; True if it changed."""
        self.written[str(path)] = text
        st = safefs.lstat(path)
        if st is not None and stat.S_ISREG(st.st_mode) and self.read(path) == text \
                and not self._meta_differs(st, mode, owner, group):
            return False
        self.actions.append(Action("write", f"{mode:04o} {owner}:{group}", str(path)))
        if not self.dry_run:
            safefs.write(path, text.encode(), mode, uid_of(owner), gid_of(group))
        return True

    def ensure_dir(self, path: Path, mode: int = 0o755, owner: str = "root",
                   group: str = "root") -> bool:
        """Make path a directory with mode and owner; True if anything changed."""
        st = safefs.lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            if not self._meta_differs(st, mode, owner, group):
                return False
            self.actions.append(Action("chmod", f"{mode:04o} {owner}:{group}", str(path)))
        else:
            self.actions.append(Action("mkdir", f"{mode:04o} {owner}:{group}", str(path)))
        if not self.dry_run:
            safefs.ensure_dir(path, mode, uid_of(owner), gid_of(group))
        return True

    def symlink(self, link: Path, target: str) -> bool:
        """Point link at target, swapped in with rename(2); True if it changed."""
        if safefs.readlink(link) == target:
            return False
        self.actions.append(Action("symlink", target, str(link)))
        if not self.dry_run:
            safefs.symlink(link, target)
        return True

    def remove(self, path: Path) -> bool:
        """Remove a file or symlink if present; True if it existed."""
        if safefs.lstat(path) is None:
            return False
        self.actions.append(Action("remove", path=str(path)))
        if not self.dry_run:
            safefs.remove(path)
        return True

    def rename(self, path: Path, new_name: str) -> None:
        """Rename path to new_name in the same directory, with rename(2)."""
        self.actions.append(Action("rename", new_name, str(path)))
        if not self.dry_run:
            safefs.rename(path, new_name)

    def remove_tree(self, path: Path) -> bool:
        """Delete a directory tree (links in it are removed, never followed);
        True if it existed."""
        if safefs.lstat(path) is None:
            return False
        self.run(["rm", "-rf", "--one-file-system", "--", path])
        return True

    def validated(self, paths: Sequence[Path], check: Sequence[str | Path],
                  what: str) -> Validation:
        """A change to paths that counts only once check passes; every path is put
        back if it fails or anything stops it (validation.py)."""
        return Validation(self, paths, check, what)

    def write_checked(self, path: Path, text: str, check: Sequence[str], what: str,
                      mode: int = 0o644, owner: str = "root", group: str = "root") -> bool:
        """write(), once check has passed on the new text in a root-only candidate
        file (CANDIDATE in check stands for it), as Ansible's validate= does: the
        real path never holds an unchecked text, not even while it is checked.
        For a file its tool can check alone (visudo -c -f, nft -c -f, logrotate)."""
        if self.read(path) == text:
            return self.write(path, text, mode, owner, group)  # at most its mode
        self.check_candidate(path.name, text, check, f"{what}: the new {path}")
        return self.write(path, text, mode, owner, group)

    def check_candidate(self, name: str, text: str, check: Sequence[str], what: str,
                        mode: int = 0o600, owner: str = "root", group: str = "root") -> None:
        """Run check on text in a root-only candidate file called name
        (CANDIDATE in check stands for it); SiteopsError if it fails. Nothing
        is run in a dry run."""
        if self.dry_run:
            return
        candidate = self.paths.state / "candidates" / name
        safefs.ensure_dir(candidate.parent, 0o700, 0, 0)
        safefs.write(candidate, text.encode(), mode, uid_of(owner), gid_of(group))
        try:
            res = self.query([str(candidate) if a == CANDIDATE else a for a in check],
                             ok=range(256))
        finally:
            safefs.remove(candidate)
        if res.code != 0:
            lines = (res.err or res.out).strip().splitlines() or ["no output"]
            raise SiteopsError(f"{what} fails `{check[0]}`'s check, so it was not written: "
                               f"{lines[-1]}")

    def snapshot(self, path: Path) -> tuple | None:
        """What path is now (file text and metadata, or symlink target), for put_back."""
        st = safefs.lstat(path)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            return ("link", safefs.readlink(path))
        return ("file", self.read(path), st.st_mode & 0o7777, st.st_uid, st.st_gid)

    def put_back(self, path: Path, snap: tuple | None) -> None:
        """Return path to a snapshot after a failed validation (no-op in a dry run)."""
        if self.dry_run:
            return
        if snap is None:
            with contextlib.suppress(FileNotFoundError):
                safefs.remove(path)
        elif snap[0] == "link":
            self.symlink(path, snap[1])
        else:
            _, text, mode, uid, gid = snap
            safefs.write(path, text.encode(), mode, uid, gid)
