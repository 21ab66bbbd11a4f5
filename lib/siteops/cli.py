"""What every command shares: common flags, the root check, one error line,
exit codes (0 ok, 1 failure, 2 bad input, 130 Ctrl-C, 143 SIGTERM) and the
action log."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import signal
import sys
import traceback
from typing import Callable, Sequence

from . import journal, notify
from .errors import SiteopsError, UsageError
from .host import Host
from .signals import INTERRUPTS, on_interrupt


class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument reported in one line (exit 2) instead of
    the usage block: control characters in the value are shown escaped."""

    exit_code = 2

    def error(self, message: str):
        message = message.encode("unicode_escape", "backslashreplace").decode("ascii") \
            if any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 or 0x202a <= ord(c) <= 0x202e
                   for c in message) else message
        if _raising.get():
            raise UsageError(f"{self.prog}: {message}")
        self.exit(self.exit_code, f"{self.prog.split()[0]}: error: {message} "
                                  f"(see {self.prog} --help)\n")

    def print_help(self, file=None):
        if _raising.get():
            raise UsageError(f"{self.prog}: --help is not available here")
        super().print_help(file)


_raising = contextvars.ContextVar("raising", default=False)


@contextlib.contextmanager
def errors_raised():
    """Within it, a parser's error raises UsageError (one line) instead of
    printing and exiting, and help is refused: for parsing argv that came
    from someone else (the tenant command)."""
    token = _raising.set(True)
    try:
        yield
    finally:
        _raising.reset(token)


def parser(prog: str, description: str, epilog: str = "") -> Parser:
    """An argparse parser with the flags every command has."""
    p = Parser(prog=prog, description=description, epilog=epilog,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true",
                   help="print every change it would make and make none (works without root "
                        "where the facts it reads allow)")
    p.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    p.add_argument("--trace", action="store_true",
                   help="print to stderr, as it goes, each step and command with the seconds "
                        "since the start and how long it took (where the time goes)")
    return p


def log_action(host: Host, prog: str, argv: Sequence[str], result: str) -> None:
    """Append one JSON line about this run to /var/log/siteops/actions.jsonl."""
    if not host.dry_run:
        journal.record_action(host.paths, {
            "command": prog, "argv": list(argv), "result": result, "user": journal.who(),
            "changed": host.changed_steps})


def main(prog: str, p: argparse.ArgumentParser,
         body: Callable[[Host, argparse.Namespace], int | None],
         argv: Sequence[str] | None = None, host: Host | None = None,
         error_code: int | None = None,
         public_argv: Callable[[list[str]], list[str]] = list) -> int:
    """Parse argv, run body against the host, and turn the outcome into an exit
    code: body's own (None: 0), or the error's; error_code replaces every
    error's code (audit: 3, "the check itself could not run"). public_argv
    gives what the action log may keep of argv (config: values masked)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)  # exits 2 with usage on bad input
    logged = public_argv(argv)
    host = host or Host(dry_run=args.dry_run)
    host.dry_run = args.dry_run
    host.trace = sys.stderr if args.trace else None
    os.umask(0o022)  # what siteops and its tools create never depends on the caller's umask
    # SIGTERM (systemd stopping a timer's service, a CI job cancelled) takes
    # Ctrl-C's path: what was not checked is put back, then exit 143.
    handlers = {sig: signal.signal(sig, on_interrupt) for sig in INTERRUPTS}
    try:
        if not args.dry_run and os.geteuid() != 0:
            raise SiteopsError("must be run as root (use sudo); --dry-run shows the plan without root")
        code = body(host, args) or 0
        if host.changed_steps or host.unchanged_steps:
            host.say(host.summary())
        log_action(host, prog, logged, "ok")
        return code
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"{prog}: interrupted by {signal.Signals(signum).name}: what it had not "
              "checked was put back; run it again to finish", file=sys.stderr)
        log_action(host, prog, logged, f"interrupted ({signal.Signals(signum).name})")
        return 128 + signum
    except SiteopsError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        log_action(host, prog, logged, f"error: {exc}")
        notify.command_failed(host, prog, logged, str(exc))
        return error_code or exc.exit_code
    except Exception as exc:  # a bug: one line, the traceback only on request
        log_action(host, prog, logged, f"unexpected error: {exc!r}")
        notify.command_failed(host, prog, logged, f"unexpected error: {exc!r}")
        if args.debug:
            raise
        print(f"{prog}: unexpected error: {exc!r} (run with --debug for the traceback)",
              file=sys.stderr)
        return error_code or 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
