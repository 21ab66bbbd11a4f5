"""Alerts that reach a person: channels (a webhook, an email address) in
/etc/siteops/notify.json (root-only: a webhook URL or SMTP password is a
secret), and what was said in /var/lib/siteops/alerts.json.

Events: audit's findings as they change (OK -> WARNING/CRITICAL, a change of
severity, the recovery: the check passing again, or a problem no longer found
when its host or site is audited; a problem still open is said again once a
day) and the failure of a command that runs unattended or matters (deploy,
rollback, backup, tls, outdated), an unexpected error included. One run's
events go out together, one message per channel. A channel added later is
told of the problems already open. A channel that cannot be reached keeps
its events and the next run sends them; a send never waits more than TIMEOUT
seconds and never fails the command that caused it. Every message is redacted
of the host's generated secrets. Credentials go to an SMTP server only over
TLS (port 465: implicit TLS; otherwise STARTTLS, required when they are
set). alerts.json is read and written under its own lock (the hourly audit
and a manual one may run at once)."""

from __future__ import annotations

import contextlib
import glob
import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Iterator

from . import envfile, registry
from .errors import SiteopsError
from .host import Host, redact
from .journal import hours_between, now

TIMEOUT = 5.0
IMPLICIT_TLS_PORT = 465
REPEAT_HOURS = 24
FORMATS = ("json", "slack", "discord", "ntfy", "gotify")
COMMANDS = ("deploy", "rollback", "backup", "tls", "outdated")


@dataclass
class Channel:
    id: str
    kind: str  # webhook | email
    target: str  # the URL, or the address
    format: str = "json"
    smtp: str = "localhost:25"
    sender: str | None = None
    user: str | None = None
    password: str | None = None


@dataclass
class Event:
    kind: str  # problem | recovered | still | failed | test
    subject: str  # host, a site's name
    text: str
    check: str | None = None
    severity: str | None = None
    at: str = field(default_factory=now)
    remedy: str = ""


def config_path(host: Host) -> Path:
    return host.paths.etc / "notify.json"


def state_path(host: Host) -> Path:
    return host.paths.state / "alerts.json"


def channels(host: Host) -> list[Channel]:
    doc = json.loads(host.read(config_path(host)) or '{"channels": []}')
    return [Channel(**c) for c in doc["channels"]]


def save_channels(host: Host, chans: list[Channel]) -> None:
    host.write(config_path(host), json.dumps({"channels": [asdict(c) for c in chans]},
                                             indent=1, sort_keys=True) + "\n", 0o600)


def shown(c: Channel) -> str:
    """A channel as listed: a webhook's path and query (its token) left out."""
    if c.kind == "webhook":
        scheme, _, rest = c.target.partition("://")
        return f"webhook {scheme}://{rest.split('/', 1)[0]}/… ({c.format})"
    return f"email {c.target} via {c.smtp}" + (f" as {c.user}" if c.user else "")


def load_state(host: Host) -> dict:
    try:
        doc = json.loads(host.read(state_path(host)) or "{}")
    except json.JSONDecodeError:
        doc = {}
    doc.setdefault("open", {})
    doc.setdefault("outbox", {})
    return doc


def save_state(host: Host, state: dict) -> None:
    host.write(state_path(host), json.dumps(state, indent=1, sort_keys=True) + "\n", 0o600)


@contextlib.contextmanager
def state_locked(host: Host) -> Iterator[dict]:
    """alerts.json under its lock, saved as the block ends normally."""
    with registry.flock(host.paths.alerts_lock, "alerts", 30, "the alert state"):
        state = load_state(host)
        yield state
        save_state(host, state)


def subject_of(check: str) -> str:
    """The host or site a finding's id is about (site.NAME.... or host....)."""
    kind, _, rest = check.partition(".")
    return rest.split(".", 1)[0] if kind == "site" else "host"


def changes(state: dict, findings: list, at: str, ok: str = "ok") -> list[Event]:
    """Events of audit's findings against what was said before (state's open
    problems, updated in place): new or changed problems, problems still open
    a day after they were last said, recoveries. A problem this run no longer
    finds has recovered when its host or site was audited (an instance's
    finding names its port, which a deploy changes); those of a site not
    audited now are left as they were."""
    events = []
    open_ = state["open"]
    audited = {f.subject for f in findings}
    for f in findings:
        known = open_.get(f.id)
        if f.severity != ok:
            if known is None or known["severity"] != f.severity:
                open_[f.id] = {"severity": f.severity, "since": at, "said": at,
                               "subject": f.subject, "text": f.message}
                events.append(Event("problem", f.subject, f.message, f.id, f.severity, at,
                                    f.remedy))
            elif hours_between(known["said"], at) >= REPEAT_HOURS:
                known["said"] = at
                events.append(Event("still", f.subject, f.message, f.id, f.severity, at,
                                    f.remedy))
        elif known is not None:
            del open_[f.id]
            events.append(Event("recovered", f.subject, f.message, f.id, ok, at))
    found = {f.id for f in findings}
    for check, known in sorted(open_.items()):
        subject = known.get("subject") or subject_of(check)
        if check not in found and subject in audited:
            del open_[check]
            events.append(Event("recovered", subject, "no longer found", check, ok, at))
    return events


def open_problems(state: dict) -> list[Event]:
    """The problems still open, as a channel added now is told of them."""
    return [Event("still", known.get("subject") or subject_of(check),
                  known.get("text", "open since " + known["since"]), check, known["severity"],
                  known["said"]) for check, known in sorted(state["open"].items())]


def secrets(host: Host) -> list[str]:
    """The host's generated secrets (every site's .env values), which no message may hold."""
    found = []
    for env in glob.glob(str(host.paths.sites / "*" / "shared" / ".env")):
        try:
            found += envfile.secrets_of(Path(env).read_text())
        except OSError:
            continue
    return found


LABEL = {"problem": "PROBLEM", "still": "STILL OPEN", "recovered": "RECOVERED",
         "failed": "FAILED", "test": "TEST"}


def text_of(hostname: str, events: list[Event]) -> str:
    lines = [f"siteops on {hostname}: {len(events)} event(s)"]
    for e in events:
        what = f"{e.check} " if e.check else ""
        sev = f" [{e.severity.upper()}]" if e.severity and e.kind != "recovered" else ""
        lines.append(f"- {LABEL[e.kind]}{sev} {e.subject}: {what}{e.text}"
                     + (f" (fix: {e.remedy})" if e.remedy else ""))
    lines.append(f"Look closer: ssh {hostname} sudo audit")
    return "\n".join(lines)


def body_of(c: Channel, hostname: str, events: list[Event], text: str) -> tuple[bytes, dict]:
    """A webhook's request body and headers in the channel's format."""
    title = f"siteops on {hostname}"
    if c.format == "ntfy":
        return text.encode(), {"Title": title, "Content-Type": "text/plain; charset=utf-8"}
    doc: dict
    if c.format == "slack":
        doc = {"text": text}
    elif c.format == "discord":
        doc = {"content": text[:2000]}
    elif c.format == "gotify":
        doc = {"title": title, "message": text}
    else:
        doc = {"host": hostname, "text": text, "events": [asdict(e) for e in events]}
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


def deliver(c: Channel, hostname: str, events: list[Event], text: str) -> None:
    """Send one message; OSError (or smtplib's) when it cannot be delivered."""
    if c.kind == "webhook":
        body, headers = body_of(c, hostname, events, text)
        req = urllib.request.Request(c.target, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:  # noqa: S310 (http/https only)
            if not 200 <= resp.status < 300:
                raise OSError(f"HTTP {resp.status}")
        return
    msg = EmailMessage()
    msg["Subject"] = f"siteops on {hostname}: " + ", ".join(
        f"{LABEL[e.kind]} {e.subject}" for e in events[:3]) + ("…" if len(events) > 3 else "")
    msg["From"] = c.sender or f"siteops@{hostname}"
    msg["To"] = c.target
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = make_msgid(domain=(c.sender or msg["From"]).rpartition("@")[2])
    msg.set_content(text)
    server, _, port = c.smtp.rpartition(":")
    smtp: smtplib.SMTP
    if int(port) == IMPLICIT_TLS_PORT:
        smtp = smtplib.SMTP_SSL(server, int(port), timeout=TIMEOUT, context=tls_context())
    else:
        smtp = smtplib.SMTP(server, int(port), timeout=TIMEOUT)
    with smtp:
        smtp.ehlo()
        if not isinstance(smtp.sock, ssl.SSLSocket) and smtp.has_extn("starttls"):
            smtp.starttls(context=tls_context())
            smtp.ehlo()
        if c.user and c.password:
            if not isinstance(smtp.sock, ssl.SSLSocket):
                raise OSError(f"{c.smtp} offers no STARTTLS: the SMTP credentials are not "
                              f"sent in clear (use its TLS port, e.g. {IMPLICIT_TLS_PORT})")
            smtp.login(c.user, c.password)
        smtp.send_message(msg)


def tls_context() -> ssl.SSLContext:
    """TLS to an SMTP server: its certificate verified against the system's CAs."""
    return ssl.create_default_context()


def send(host: Host, events: list[Event], state: dict | None = None,
         only: str | None = None) -> list[str]:
    """Queue events for every channel (or the one with id only) and send each
    channel's queue as one message; returns the channels that could not be
    reached (their events stay queued for the next run). state: alerts.json
    as the caller holds it locked; else it is locked here. Never raises."""
    try:
        chans = [c for c in channels(host) if only in (None, c.id)]
    except (OSError, ValueError, TypeError) as exc:
        host.say(f"note: alerts not sent: {config_path(host)} cannot be read ({exc})")
        return []
    if not chans or host.dry_run:
        return []
    if state is None:
        try:
            with state_locked(host) as locked:
                return send(host, events, locked, only)
        except (SiteopsError, OSError) as exc:
            host.say(f"note: alerts not sent: {exc}")
            return []
    hostname = socket.gethostname()
    hidden = secrets(host)
    failed = []
    for c in chans:
        queue = state["outbox"].get(c.id, []) + [asdict(e) for e in events]
        if not queue:
            continue
        batch = [Event(**e) for e in queue]
        text = redact(text_of(hostname, batch), hidden)
        for e in batch:
            e.text = redact(e.text, hidden)
        try:
            deliver(c, hostname, batch, text)
            state["outbox"].pop(c.id, None)
        except (OSError, smtplib.SMTPException, urllib.error.URLError, ValueError) as exc:
            state["outbox"][c.id] = queue[-200:]
            failed.append(c.id)
            host.say(f"note: alert to {shown(c)} not delivered ({exc}); the next run "
                     "sends it again")
    return failed


def audit_events(host: Host, findings: list, at: str) -> None:
    """Say what changed since the last audit, on every channel."""
    if host.dry_run:
        return
    try:
        with state_locked(host) as state:
            events = changes(state, findings, at)
            if events or state["outbox"]:
                send(host, events, state)
    except (SiteopsError, OSError) as exc:
        host.say(f"note: alerts not sent: {exc}")


def tell_new_channel(host: Host, cid: str) -> None:
    """A channel just added is told of the problems already open (never raises)."""
    if host.dry_run:
        return
    try:
        with state_locked(host) as state:
            problems = open_problems(state)
            if problems:
                host.say(f"{'':13}telling {cid} of {len(problems)} problem(s) already open")
                send(host, problems, state, only=cid)
    except (SiteopsError, OSError) as exc:
        host.say(f"note: alerts not sent: {exc}")


def command_failed(host: Host, prog: str, argv: list[str], error: str) -> None:
    """A command that matters failed: say so (never raises)."""
    if prog not in COMMANDS or host.dry_run:
        return
    subject = next((a for a in argv if not a.startswith("-")), "host")
    send(host, [Event("failed", subject, f"`{' '.join([prog, *argv])}` failed: {error}",
                      remedy="sudo tail /var/log/siteops/actions.jsonl")])
