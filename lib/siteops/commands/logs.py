"""logs: a site's app, worker, job and nginx logs, one prefix per source;
`logs NAME drain ...`: where they are shipped (drains.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import cli, drains, fleetlogs, registry, safefs, validate
from ..ops import drains as drains_op
from ..ops import fleetlogs as fleetlogs_op
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

With --all-hosts: NAME's lines from every host of the fleet, as the fleet's
log host keeps them (`hosts logs-to`, docs/hosts.md), one time-ordered view
naming each line's host, the lines a moved site wrote on its old host
included; --since and --grep narrow it down there.

`logs NAME drain add|list|remove` ships the same files to a collector as
they are written (see `logs NAME drain --help` and docs/logs.md).
"""

EPILOG = """\
examples:
  sudo logs shop                 the last 20 lines of every log of shop
  sudo logs shop mail -f         follow the workers of type mail
  sudo logs shop nginx -n 100
  sudo logs shop --all-hosts --since 2h --grep ' 502 '
  sudo logs shop drain add syslog+tls://logs.example.com:6514
"""

DRAIN_DESCRIPTION = """\
Ship site NAME's logs (the files `logs NAME` prints) to a collector, as
they are written: RFC 5424 syslog records over TLS (RFC 5425 framing), one
program name per log file (NAME.frontend, NAME.nginx-access,
NAME.worker-mail, ...), the host in each record's HOSTNAME and the site in
its structured data [siteops@32473 site="NAME"]. rsyslog, the
distribution's, does the shipping (installed with the first drain); each
drain has its own queue: a collector that is down gets what was written
meanwhile when it is back, in order, up to 256 MB per drain (then the site's
reading waits, a line at most 60 s before it is dropped; never the host's disk
filled). Lines written before the drain
was added are not sent.

  add URL     syslog+tls://HOST:PORT: the collector's certificate must name
              HOST and chain to --ca FILE (PEM), else to the system's CAs;
              syslog://HOST:PORT sends the logs readable by anyone on the
              way, and needs --plain
  list        the site's drains (--json)
  remove URL  stop shipping there (what its queue still holds is dropped)
"""

DRAIN_EPILOG = """\
examples:
  sudo logs shop drain add syslog+tls://logs.example.com:6514 --ca /root/collector-ca.pem
  sudo logs shop drain add syslog://10.0.0.5:514 --plain
  sudo logs shop drain list
  sudo logs shop drain remove syslog://10.0.0.5:514
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
    p.add_argument("--all-hosts", action="store_true",
                   help="from the fleet's log host: every host's lines of the site, time-ordered "
                        "(-n: lines in all, default 20)")
    p.add_argument("--since", type=since, metavar="AGE",
                   help="with --all-hosts: only lines of the last AGE (30m, 2h, 7d)")
    p.add_argument("--grep", metavar="TEXT",
                   help="with --all-hosts: only lines holding TEXT (as written, case matters)")
    # The log host's side of --all-hosts (run over SSH; the query on stdin).
    p.add_argument("--from-store", action="store_true", help=argparse.SUPPRESS)
    return p


def since(value: str) -> float:
    """--since AGE: the Unix time AGE ago."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if not (value[:-1].isascii() and value[:-1].isdigit() and value[-1:] in units):
        raise validate.InvalidInput(f"invalid --since {value!r}: a number and s, m, h or d "
                                    "(30m, 2h, 7d)")
    return time.time() - int(value[:-1]) * units[value[-1]]


def build_drain_parser() -> argparse.ArgumentParser:
    p = cli.parser("logs NAME drain", DRAIN_DESCRIPTION, DRAIN_EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("drain", choices=["drain"], help=argparse.SUPPRESS)
    p.add_argument("action", nargs="?", choices=["add", "list", "remove"])
    p.add_argument("url", nargs="?", help="the collector (add, remove)")
    p.add_argument("--ca", metavar="FILE", help="add: the PEM certificate of the CA the "
                   "collector's certificate must chain to (default: the system's CAs); "
                   "- reads it from standard input")
    p.add_argument("--plain", action="store_true",
                   help="add: allow a syslog:// URL (no encryption, no check of the collector)")
    p.add_argument("--json", action="store_true", help="list: as JSON")
    return p


def run_drain(host: Host, args: argparse.Namespace) -> int:
    if args.action is None:
        raise UsageError("drain needs add, list or remove (see logs NAME drain --help)")
    if args.action == "list":
        if args.url or args.ca or args.plain:
            raise UsageError("drain list takes no URL, --ca or --plain")
        site = registry.get_site(registry.load(host), args.name)
        rows = [{"url": d.url, "ca": "given" if d.ca else "system", "added": d.added}
                for d in site.drains]
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"site {site.name} has no drain")
        for row in [] if args.json else rows:
            print(f"{row['url']}  (CA: {row['ca']}, added {row['added']})")
        return 0
    if not args.url:
        raise UsageError(f"drain {args.action} needs the collector's URL")
    if args.action == "remove":
        if args.ca or args.plain:
            raise UsageError("drain remove takes only the URL")
        drains_op.remove(host, args.name, args.url)
        host.say(f"site {args.name}: no longer shipped to {args.url}")
        return 0
    ca = None
    if args.ca == "-":
        ca = sys.stdin.read()
    elif args.ca:
        try:
            ca = Path(args.ca).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--ca {args.ca}: {exc}") from None
    site = drains_op.add(host, args.name, args.url, ca, args.plain)
    if host.dry_run:
        host.say(drains.site_conf(host, site))
    host.say(f"site {args.name}: its logs are shipped to {args.url}")
    return 0


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
    if args.lines < 0:
        raise UsageError("-n must be 0 or more")
    if args.from_store or args.all_hosts:
        return fleet_view(host, args)
    if args.since is not None or args.grep is not None:
        raise UsageError("--since and --grep go with --all-hosts")
    site = registry.get_site(registry.load(host), args.name)
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


def fleet_view(host: Host, args: argparse.Namespace) -> int:
    """--all-hosts: the log host's lines of the site (it need not live here:
    it may have moved away); --from-store: the log host answering."""
    if args.follow:
        raise UsageError("-f does not go with --all-hosts")
    if args.from_store:
        try:
            q = json.loads(sys.stdin.read())
            found = fleetlogs.query(host, args.name, q["since"], q["grep"], int(q["lines"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--from-store reads a query on stdin: {exc}") from None
    else:
        found = fleetlogs_op.all_hosts(host, args.name, args.since, args.grep, args.lines)
    for line in found:
        words = line.split(" ", 3)
        if len(words) == 4 and not matches(words[2].partition(".")[2] + ".log", args.process):
            continue
        sys.stdout.write(clean(line) + "\n")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if [a for a in argv if not a.startswith("-")][1:2] == ["drain"]:
        return cli.main("logs", build_drain_parser(), run_drain, argv, host)
    return cli.main("logs", build_parser(), run, argv, host)
