"""notify: where siteops sends its alerts (a webhook, an email address)."""

from __future__ import annotations

import argparse
import json
import re
import sys

from .. import cli, envfile, notify
from ..errors import SiteopsError, UsageError
from ..host import Host

DESCRIPTION = """\
Alerts that reach a person. siteops says, on every channel added here:

  audit      a check that turns WARNING or CRITICAL (or changes between
             them), said again once a day while it stays so, and its
             recovery; audit runs hourly (siteops-audit.timer), and
             whenever it is run. Among them: a stopped unit or Redis, a stale or failed
             backup or verification, a certificate that did not renew or
             expires within 14 days, a site near its memory limit or
             answering many 5xx, a full disk, replaced code still running.
  commands   deploy, rollback, backup, tls or outdated failing (an
             unexpected error of siteops itself included).

A channel added is told at once of the problems already open. A problem
no longer found when its host or site is audited (an instance a deploy
replaced) is said to have recovered. One run's events go out as one message per channel, each naming the host,
the site, what happened and the command to look closer. A channel that
cannot be reached keeps its events (in /var/lib/siteops/alerts.json) and the
next run sends them; a send waits at most 5 s and never fails the command
that caused it. No generated secret appears in a message.

  add webhook URL [--format F]    a POST to URL: json (default: {host, text,
                                  events}), slack ({text}), discord
                                  ({content}), ntfy (plain text, Title
                                  header), gotify ({title, message}). A URL
                                  holding a token: give - and the URL on
                                  standard input, so it is never in argv.
  add email ADDRESS [--smtp HOST:PORT] [--from ADDR] [--credentials FILE]
                                  by SMTP: implicit TLS on port 465,
                                  STARTTLS elsewhere when the server offers
                                  it (certificates verified); FILE holds
                                  SMTP_USER= and SMTP_PASSWORD= (read once,
                                  kept root-only in /etc/siteops/notify.json),
                                  which are sent over TLS only, never in clear
  list [--json]                   the channels (a webhook's token not shown)
  remove ID                       a channel, by the id list shows
  test                            one test message on every channel
"""

EPILOG = """\
examples:
  sudo notify add webhook https://ntfy.sh/my-topic --format ntfy
  echo "$SLACK_URL" | sudo notify add webhook - --format slack
  sudo notify add email ops@example.com --smtp mail.example.com:587 --credentials ./smtp
  sudo notify test
"""

ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
SMTP = re.compile(r"[A-Za-z0-9.-]+:[0-9]{1,5}")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("notify", DESCRIPTION, EPILOG)
    p.add_argument("action", choices=("add", "list", "remove", "test"))
    p.add_argument("words", nargs="*", metavar="ARG",
                   help="add: webhook URL | email ADDRESS; remove: ID")
    p.add_argument("--format", choices=notify.FORMATS, default="json",
                   help="a webhook's body (default json)")
    p.add_argument("--smtp", metavar="HOST:PORT", default="localhost:25",
                   help="an email channel's SMTP server (default localhost:25)")
    p.add_argument("--from", dest="sender", metavar="ADDR", help="an email's sender")
    p.add_argument("--credentials", metavar="FILE",
                   help="SMTP_USER= and SMTP_PASSWORD= for an email channel")
    p.add_argument("--json", action="store_true", help="list: JSON")
    return p


def webhook_url(value: str) -> str:
    if value == "-":
        value = sys.stdin.readline().strip()
    if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(/[!-~]*)?", value):
        raise UsageError("invalid webhook URL: http:// or https://, printable, no spaces; "
                         "nothing was changed")
    return value


def new_channel(args: argparse.Namespace, taken: set[str]) -> notify.Channel:
    if len(args.words) != 2 or args.words[0] not in ("webhook", "email"):
        raise UsageError("add takes: webhook URL, or email ADDRESS")
    kind, target = args.words
    n = 1
    while f"{kind}-{n}" in taken:
        n += 1
    cid = f"{kind}-{n}"
    if kind == "webhook":
        return notify.Channel(cid, kind, webhook_url(target), format=args.format)
    if not ADDRESS.fullmatch(target) or (args.sender and not ADDRESS.fullmatch(args.sender)):
        raise UsageError("invalid email address; nothing was changed")
    if not SMTP.fullmatch(args.smtp):
        raise UsageError(f"invalid --smtp {args.smtp!r}: HOST:PORT; nothing was changed")
    user = password = None
    if args.credentials:
        try:
            values = envfile.parse(open(args.credentials).read())
        except OSError as exc:
            raise UsageError(f"cannot read {args.credentials}: {exc.strerror}") from None
        user, password = values.get("SMTP_USER"), values.get("SMTP_PASSWORD")
        if not user or not password:
            raise UsageError(f"{args.credentials} needs SMTP_USER= and SMTP_PASSWORD=")
    return notify.Channel(cid, kind, target, smtp=args.smtp, sender=args.sender, user=user,
                          password=password)


def run(host: Host, args: argparse.Namespace) -> int:
    chans = notify.channels(host)
    if args.action == "list":
        if args.json:
            print(json.dumps([{"id": c.id, "channel": notify.shown(c)} for c in chans], indent=2))
        else:
            for c in chans:
                host.say(f"{c.id:<12}{notify.shown(c)}")
            host.say(f"{len(chans)} channel(s)")
        return 0
    if args.action == "add":
        chan = new_channel(args, {c.id for c in chans})
        with host.step(f"alert channel {chan.id}: {notify.shown(chan)}"):
            notify.save_channels(host, [*chans, chan])
        notify.tell_new_channel(host, chan.id)
        return 0
    if args.action == "remove":
        if len(args.words) != 1 or args.words[0] not in {c.id for c in chans}:
            raise UsageError(f"remove takes one channel id of: "
                             f"{', '.join(c.id for c in chans) or '(none)'}")
        with host.step(f"alert channel {args.words[0]} removed"):
            notify.save_channels(host, [c for c in chans if c.id != args.words[0]])
        return 0
    if not chans:
        raise UsageError("no channel yet: notify add webhook URL | email ADDRESS")
    failed = notify.send(host, [notify.Event("test", "host", "a test message from notify test")])
    if failed:
        raise SiteopsError(f"not delivered to {', '.join(failed)} (kept for the next run)")
    host.say(f"test message sent to {len(chans)} channel(s)")
    return 0


def public_argv(argv: list[str]) -> list[str]:
    """What the action log keeps: a webhook URL's path and query left out."""
    return [re.sub(r"^(https?://[^/]+)/.*", r"\1/…", a) for a in argv]


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("notify", build_parser(), run, argv, host, public_argv=public_argv)
