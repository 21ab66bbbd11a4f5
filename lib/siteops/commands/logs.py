"""logs: a site's app, worker, job and nginx logs, one prefix per source."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .. import cli, registry, safefs, validate
from ..logfiles import tail
from ..errors import UsageError
from ..host import Host, clean

DESCRIPTION = """\
Print the last lines of site NAME's logs (shared/logs): its web processes
(frontend.log, frontend-error.log, api...), workers (worker-TYPE.log),
scheduled jobs (job-NAME.log) and nginx (nginx-access.log, nginx-error.log),
each line prefixed with its source. With -f, keep printing what is appended
(a rotated log is followed to its new file) until interrupted.

PROCESS narrows it down: a component (frontend, api), a worker type or job
name, or a kind: web, worker, job, nginx.

Logs are opened without following any link the site's user could have
planted, so the deploy user may run it through its sudo rule.
"""

EPILOG = """\
examples:
  sudo logs shop                 the last 20 lines of every log of shop
  sudo logs shop mail -f         follow the workers of type mail
  sudo logs shop nginx -n 100
"""

KINDS = {"web": ("frontend", "api"), "worker": ("worker",), "job": ("job",), "nginx": ("nginx",)}
POLL = 0.5


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("logs", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("process", nargs="?", help="only this source (see above)")
    p.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                   help="lines of each log to print first (default 20)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    return p


def source(filename: str) -> str:
    """The prefix of a log file: frontend-error.log -> frontend, worker-mail.log
    -> worker mail, job-cleanup.log -> job cleanup."""
    stem = filename.removesuffix(".log")
    for kind in ("worker", "job"):
        if stem.startswith(kind + "-"):
            return f"{kind} {stem[len(kind) + 1:]}"
    return stem.removesuffix("-error").removesuffix("-access")


def matches(filename: str, process: str | None) -> bool:
    if process is None:
        return True
    words = source(filename).split()
    return bool({process, *KINDS.get(process, ())} & {words[0], words[-1]})


def emit(prefix: str, line: bytes, width: int) -> None:
    sys.stdout.write(f"{prefix:<{width}} | {clean(line.decode(errors='replace'))}\n")


def run(host: Host, args: argparse.Namespace) -> int:
    site = registry.get_site(registry.load(host), args.name)
    if args.lines < 0:
        raise UsageError("-n must be 0 or more")
    logs = host.paths.of(site.name).logs
    names = [n for n in safefs.listdir(logs) if n.endswith(".log") and matches(n, args.process)]
    if not names:
        raise UsageError(f"site {site.name} has no log" + (
            f" for {args.process!r}" if args.process else "") + f" in {logs}")
    width = max(len(source(n)) for n in names)
    opened: dict[str, tuple] = {}
    for n in names:
        fh = safefs.open_read(logs / n)
        if fh is None:
            continue
        opened[n] = (fh, os.fstat(fh.fileno()).st_ino)
        for line in tail(fh, args.lines):
            emit(source(n), line, width)
    sys.stdout.flush()
    while args.follow:
        time.sleep(POLL)
        follow(logs, opened, args.process, width)
    return 0


def follow(logs: Path, opened: dict[str, tuple], process: str | None, width: int) -> None:
    """Print what was appended to each log since the last look; reopen one
    that was rotated (another inode) or truncated, and pick up new logs."""
    for n in [n for n in safefs.listdir(logs) if n.endswith(".log") and matches(n, process)]:
        fh, inode = opened.get(n, (None, None))
        if fh is not None:
            for line in fh.read().splitlines():
                emit(source(n), line, width)
        path = logs / n
        st = safefs.lstat(path)
        if st is None:
            continue
        if fh is None or st.st_ino != inode or st.st_size < fh.tell():
            if fh is not None:
                fh.close()
            fresh = safefs.open_read(path)
            if fresh is None:
                continue
            opened[n] = (fresh, os.fstat(fresh.fileno()).st_ino)
            for line in fresh.read().splitlines():
                emit(source(n), line, width)
    sys.stdout.flush()


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("logs", build_parser(), run, argv, host)
