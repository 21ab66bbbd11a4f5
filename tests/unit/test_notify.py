"""notify: what audit's changes say and when, the bodies each webhook format
gets, delivery to a real HTTP receiver and SMTP sink on loopback, a dead
channel that keeps its events for the next run, and no secret in a message."""

import http.server
import ssl
import json
import socketserver
import threading

import pytest

from fakes import make_host
from siteops import checks, notify, registry
from siteops.commands import notify as notify_command
from siteops.errors import SiteopsError, UsageError


def finding(id_, severity, message="m", subject="shop"):
    return checks.Finding(id_, severity, subject, message, "run it")


def test_problems_are_said_on_change_again_daily_and_recoveries_once():
    state = {"open": {}, "outbox": {}}
    t0, t1, t2 = "2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z", "2026-12-01T11:30:00Z"
    first = notify.changes(state, [finding("a", "critical"), finding("b", "ok")], t0)
    assert [(e.kind, e.check, e.severity) for e in first] == [("problem", "a", "critical")]
    assert "(fix: run it)" in notify.text_of("web1", first)
    assert notify.changes(state, [finding("a", "critical")], t1) == []  # unchanged: quiet
    worse = notify.changes(state, [finding("c", "warning", subject="blog")], t1)
    assert [(e.kind, e.check) for e in worse] == [("problem", "c")]
    daily = notify.changes(state, [finding("a", "critical"),
                                   finding("c", "critical", subject="blog")], t2)
    assert [(e.kind, e.check, e.severity) for e in daily] == [("still", "a", "critical"),
                                                              ("problem", "c", "critical")]
    back = notify.changes(state, [finding("a", "ok")], t2)
    assert [(e.kind, e.check) for e in back] == [("recovered", "a")]
    assert notify.changes(state, [finding("a", "ok")], t2) == []
    assert set(state["open"]) == {"c"}  # blog not audited this time: left as it was


def test_a_problem_no_longer_found_recovers_when_its_site_is_audited():
    """An instance's finding names its port: after a deploy moved the site to
    other ports, the old id is never found again, and that is its recovery."""
    t0, t1 = "2026-11-30T10:00:00Z", "2026-11-30T11:00:00Z"
    state = {"open": {}, "outbox": {}}
    stopped = "site.shop.unit:shop-api@4000.service"
    notify.changes(state, [finding(stopped, "critical"), finding("host.disk", "ok", subject="host")],
                   t0)
    # A problem recorded before subjects were kept: its subject is read from its id.
    state["open"]["site.blog.redis"] = {"severity": "warning", "since": t0, "said": t0}
    assert notify.changes(state, [finding("host.disk", "ok", subject="host")], t1) == []
    moved = notify.changes(state, [finding("site.shop.unit:shop-api@4001.service", "ok"),
                                   finding("site.blog.disk", "ok", subject="blog")], t1)
    assert [(e.kind, e.subject, e.check, e.text) for e in moved] == [
        ("recovered", "blog", "site.blog.redis", "no longer found"),
        ("recovered", "shop", stopped, "no longer found")]
    assert state["open"] == {}


def test_a_channel_added_later_is_told_of_the_problems_already_open(root, receivers):
    web, _ = receivers
    host = host_with(root, [])
    notify.audit_events(host, [finding("site.shop.redis", "critical", "Redis is down")],
                        "2026-11-30T10:00:00Z")
    notify_command.run(host, notify_command.build_parser().parse_args(
        ["add", "webhook", f"http://127.0.0.1:{web}/h"]))
    assert len(Receiver.got) == 1
    doc = json.loads(Receiver.got[0])
    assert [(e["kind"], e["check"], e["text"]) for e in doc["events"]] == [
        ("still", "site.shop.redis", "Redis is down")]
    notify.audit_events(host, [finding("site.shop.redis", "critical", "Redis is down")],
                        "2026-11-30T11:00:00Z")
    assert len(Receiver.got) == 1  # told once, not again within the day


def test_an_unexpected_error_of_a_command_that_alerts_is_said(root, receivers, monkeypatch):
    from siteops import cli
    web, _ = receivers
    host = host_with(root, [notify.Channel("webhook-1", "webhook", f"http://127.0.0.1:{web}/h")])
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)

    def body(_host, _args):
        raise KeyError("boom")
    assert cli.main("backup", cli.parser("backup", "x"), body, [], host) == 1
    assert "`backup` failed: unexpected error: KeyError('boom')" in json.loads(
        Receiver.got[0])["text"]


@pytest.mark.parametrize("fmt, check", [
    ("json", lambda b, h: json.loads(b)["events"][0]["check"] == "site.shop.unit:x"),
    ("slack", lambda b, h: "PROBLEM [CRITICAL] shop" in json.loads(b)["text"]),
    ("discord", lambda b, h: "shop" in json.loads(b)["content"]),
    ("gotify", lambda b, h: json.loads(b)["title"].startswith("siteops on")),
    ("ntfy", lambda b, h: h["Title"] == "siteops on web1" and b.startswith(b"siteops on web1")),
])
def test_each_webhook_format(fmt, check):
    events = [notify.Event("problem", "shop", "stopped", "site.shop.unit:x", "critical")]
    text = notify.text_of("web1", events)
    body, headers = notify.body_of(notify.Channel("w", "webhook", "http://x", fmt), "web1",
                                   events, text)
    assert check(body, headers)
    assert text.endswith("Look closer: ssh web1 sudo audit")


class Receiver(http.server.BaseHTTPRequestHandler):
    got: list = []

    def do_POST(self):
        Receiver.got.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class Sink(socketserver.StreamRequestHandler):
    """The least of an SMTP server: enough for smtplib to deliver one message."""
    got: list = []

    def handle(self):
        self.wfile.write(b"220 sink\r\n")
        data = None
        while line := self.rfile.readline():
            if data is not None:
                if line == b".\r\n":
                    Sink.got.append(b"".join(data))
                    data = None
                    self.wfile.write(b"250 ok\r\n")
                else:
                    data.append(line)
            elif line.upper().startswith(b"DATA"):
                data = []
                self.wfile.write(b"354 go\r\n")
            elif line.upper().startswith(b"QUIT"):
                self.wfile.write(b"221 bye\r\n")
                return
            elif line.upper().startswith(b"EHLO"):
                self.wfile.write(b"250 sink\r\n")
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def receivers():
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Sink)
    for server in (web, smtp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.got, Sink.got = [], []
    yield web.server_address[1], smtp.server_address[1]
    web.shutdown()
    smtp.shutdown()


def host_with(root, channels):
    host, _ = make_host(root, dry_run=False)
    (root / "etc/siteops").mkdir(parents=True)
    (root / "var/lib/siteops").mkdir(parents=True)
    env = root / "srv/sites/shop/shared/.env"
    env.parent.mkdir(parents=True)
    env.write_text("DATABASE_URL=postgresql://shop:S3cretDbPassw0rdXyz@127.0.0.1:5432/shop\n"
                   "SECRET_KEY=abcdefabcdefabcdefabcdefabcdef12\n")
    notify.save_channels(host, channels)
    return host


def test_a_run_is_one_message_per_channel_and_holds_no_secret(root, receivers):
    web, smtp = receivers
    host = host_with(root, [notify.Channel("webhook-1", "webhook", f"http://127.0.0.1:{web}/h"),
                            notify.Channel("email-1", "email", "ops@example.com",
                                           smtp=f"127.0.0.1:{smtp}")])
    events = [notify.Event("failed", "shop", "deploy failed: SECRET_KEY="
                           "abcdefabcdefabcdefabcdefabcdef12 in the output"),
              notify.Event("problem", "shop", "redis down", "site.shop.unit:shop-redis.service",
                           "critical")]
    assert notify.send(host, events) == []
    assert len(Receiver.got) == 1 and len(Sink.got) == 1
    doc = json.loads(Receiver.got[0])
    assert len(doc["events"]) == 2 and "redis down" in doc["text"]
    for sent in (Receiver.got[0], Sink.got[0]):
        assert b"abcdefabcdefabcdefabcdefabcdef12" not in sent and b"********" in sent
    assert b"To: ops@example.com" in Sink.got[0]
    assert notify.load_state(host)["outbox"] == {}


def test_a_dead_channel_keeps_its_events_and_the_next_run_sends_them(root, receivers):
    web, _ = receivers
    host = host_with(root, [notify.Channel("webhook-1", "webhook", "http://127.0.0.1:9/dead"),
                            notify.Channel("webhook-2", "webhook", f"http://127.0.0.1:{web}/h")])
    assert notify.send(host, [notify.Event("failed", "shop", "one")]) == ["webhook-1"]
    assert len(Receiver.got) == 1  # the live channel is not held back
    assert [e["text"] for e in notify.load_state(host)["outbox"]["webhook-1"]] == ["one"]
    notify.save_channels(host, [notify.Channel("webhook-1", "webhook",
                                               f"http://127.0.0.1:{web}/h")])
    assert notify.send(host, [notify.Event("failed", "shop", "two")]) == []
    assert [e["text"] for e in json.loads(Receiver.got[-1])["events"]] == ["one", "two"]
    assert notify.load_state(host)["outbox"] == {}


def test_a_failed_command_is_said_and_its_webhook_token_never_logged(root, receivers):
    web, _ = receivers
    host = host_with(root, [notify.Channel("webhook-1", "webhook", f"http://127.0.0.1:{web}/h")])
    notify.command_failed(host, "deploy", ["shop", "--ref", "v2"], "health check failed")
    notify.command_failed(host, "sites", ["list"], "whatever")  # not a command that alerts
    assert len(Receiver.got) == 1
    assert "`deploy shop --ref v2` failed: health check failed" in json.loads(Receiver.got[0])[
        "text"]
    assert notify_command.public_argv(["add", "webhook", "https://hooks.slack.com/services/T/B/X"]
                                      ) == ["add", "webhook", "https://hooks.slack.com/…"]


@pytest.mark.parametrize("argv, message", [
    (["add", "webhook", "ftp://x"], "invalid webhook URL"),
    (["add", "webhook", "https://x/a b"], "invalid webhook URL"),
    (["add", "email", "not-an-address"], "invalid email address"),
    (["add", "email", "a@example.com", "--smtp", "x;y"], "invalid --smtp"),
    (["add", "pager", "x"], "add takes"),
    (["remove", "webhook-9"], "remove takes one channel id"),
    (["test"], "no channel yet"),
])
def test_bad_input_changes_nothing(root, argv, message):
    host = host_with(root, [])
    before = (root / "etc/siteops/notify.json").read_text()
    with pytest.raises(UsageError, match=message):
        notify_command.run(host, notify_command.build_parser().parse_args(argv))
    assert (root / "etc/siteops/notify.json").read_text() == before


class TLSSink(socketserver.StreamRequestHandler):
    """An SMTP server with TLS: STARTTLS offered (or not), or implicit TLS,
    and AUTH; each session's commands, whether TLS was on, and messages."""
    context: "ssl.SSLContext"
    offer_starttls = True
    implicit = False
    sessions: list = []

    def setup(self):
        if self.implicit:
            self.request = self.context.wrap_socket(self.request, server_side=True)
        super().setup()

    def handle(self):
        session = {"tls": self.implicit, "commands": [], "messages": []}
        TLSSink.sessions.append(session)
        self.wfile.write(b"220 sink\r\n")
        data = None
        while line := self.rfile.readline():
            if data is not None:
                if line == b".\r\n":
                    session["messages"].append(b"".join(data))
                    data = None
                    self.wfile.write(b"250 ok\r\n")
                else:
                    data.append(line)
                continue
            word = line.split()[0].upper() if line.split() else b""
            session["commands"].append((word.decode(), session["tls"]))
            if word == b"EHLO":
                offer = self.offer_starttls and not session["tls"]
                self.wfile.write(b"250-sink\r\n" + (b"250-STARTTLS\r\n" if offer else b"")
                                 + b"250 AUTH PLAIN LOGIN\r\n")
            elif word == b"STARTTLS":
                self.wfile.write(b"220 go ahead\r\n")
                self.wfile.flush()
                self.request = self.context.wrap_socket(self.request, server_side=True)
                self.rfile = self.request.makefile("rb")
                self.wfile = socketserver._SocketWriter(self.request)
                session["tls"] = True
            elif word == b"AUTH":
                self.wfile.write(b"235 ok\r\n")
            elif word == b"DATA":
                data = []
                self.wfile.write(b"354 go\r\n")
            elif word == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A throwaway certificate for 127.0.0.1 (its own CA)."""
    import subprocess
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_sink(tls_files, monkeypatch):
    """Start(offer_starttls, implicit) -> port; notify trusts the sink's certificate."""
    import ssl
    cert, key = tls_files
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert, key)
    monkeypatch.setattr(notify, "tls_context", lambda: ssl.create_default_context(cafile=cert))
    servers = []

    def start(offer_starttls=True, implicit=False):
        handler = type("Sink", (TLSSink,), {"context": server_side, "implicit": implicit,
                                            "offer_starttls": offer_starttls})
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]
    TLSSink.sessions = []
    yield start
    for server in servers:
        server.shutdown()


def email(port, user=True):
    return notify.Channel("email-1", "email", "ops@example.com", smtp=f"127.0.0.1:{port}",
                          sender="so@example.com", user="ops" if user else None,
                          password="Sm7pPassw0rdXyz" if user else None)


def test_credentials_go_over_starttls_and_a_message_has_a_date_and_an_id(root, tls_sink):
    host = host_with(root, [email(tls_sink())])
    assert notify.send(host, [notify.Event("failed", "shop", "one")]) == []
    [session] = TLSSink.sessions
    assert ("STARTTLS", False) in session["commands"] and ("AUTH", True) in session["commands"]
    assert ("AUTH", False) not in session["commands"]
    [message] = session["messages"]
    assert b"\nDate: " in message and b"\nMessage-ID: <" in message and b"@example.com>" in message


def test_credentials_are_never_sent_to_a_server_without_tls(root, tls_sink):
    host = host_with(root, [email(tls_sink(offer_starttls=False))])
    assert notify.send(host, [notify.Event("failed", "shop", "one")]) == ["email-1"]
    [session] = TLSSink.sessions
    assert [c for c, _ in session["commands"]] == ["EHLO", "QUIT"] and session["messages"] == []
    assert notify.load_state(host)["outbox"]["email-1"][0]["text"] == "one"  # kept for later
    # Without credentials, a server without TLS still gets the message.
    notify.save_channels(host, [email(tls_sink(offer_starttls=False), user=False)])
    assert notify.send(host, []) == [] and len(TLSSink.sessions[-1]["messages"]) == 1


def test_port_465_is_implicit_tls(root, tls_sink, monkeypatch):
    port = tls_sink(implicit=True)
    monkeypatch.setattr(notify, "IMPLICIT_TLS_PORT", port)  # 465 needs root to bind
    host = host_with(root, [email(port)])
    assert notify.send(host, [notify.Event("failed", "shop", "one")]) == []
    [session] = TLSSink.sessions
    assert session["tls"] and ("AUTH", True) in session["commands"]
    assert len(session["messages"]) == 1


def test_two_audits_at_once_do_not_lose_what_alerts_said(root):
    """The alert state is read, changed and written under its lock."""
    host = host_with(root, [])
    with notify.state_locked(host) as state:
        state["open"]["site.shop.redis"] = {"severity": "critical", "since": "t", "said": "t"}
        with pytest.raises(SiteopsError, match="alert state is locked"):
            with registry.flock(host.paths.alerts_lock, "second", 0, "the alert state"):
                pass
    assert "site.shop.redis" in notify.load_state(host)["open"]
