"""The fleet's log host: one host of the inventory stores every host's site
logs and siteops's own action log, and answers `logs NAME --all-hosts`.

The path is the drains' (drains.py): each host's rsyslog reads the same
files and sends RFC 5424 records over TLS, each source through a
disk-assisted queue of its own. What this adds:

- certificates siteops issues and pins: the log host keeps a CA of its own
  (its key never leaves it) and signs its server certificate (named by the
  address the inventory has for it) and one client certificate per shipping
  host, whose key is made on that host and never leaves it either. A
  shipper trusts that CA alone, for that name alone; the log host takes
  records only from a client whose certificate that CA signed;
- the store, /var/log/siteops-fleet/HOST/SITE.log (HOST the record's
  HOSTNAME, SITE the first part of its program name; siteops.log is the
  host's action log), one line per record: time, host, program, message;
- retention: logrotate, daily, each file kept KEEP_DAYS days and rotated
  early past its size bound.

/etc/siteops/fleet-logs.json says what this host does: `ship` (to which
host, address and port) and, on the log host, `receive`."""

from __future__ import annotations

import heapq
import json
import os
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import SiteopsError, UsageError
from .host import Host
from .templates import render

PORT = 6514
KEEP_DAYS = 14
MAX_SIZE = "100M"
SIZE = re.compile(r"[1-9][0-9]{0,5}[KMG]")
CA_DAYS = 3650
CERT_DAYS = 825
ACTIONS = "siteops"  # the action log's name in the store (no site has that name's file)


@dataclass(frozen=True)
class Shipping:
    """Where this host ships: the log host's inventory name, address, port."""
    host: str
    address: str
    port: int = PORT


@dataclass(frozen=True)
class Receiving:
    """This host is the log host: its address (its certificate's name), port
    and retention."""
    address: str
    port: int = PORT
    keep_days: int = KEEP_DAYS
    max_size: str = MAX_SIZE


def size(value: str) -> str:
    """--max-size: a logrotate size, 1K to 999999G."""
    if not SIZE.fullmatch(value):
        raise UsageError(f"invalid size {value!r}: a number and K, M or G (100M, 2G)")
    return value


# -- what this host does ---------------------------------------------------------

def config_path(host: Host) -> Path:
    return host.paths.etc / "fleet-logs.json"


def load(host: Host) -> tuple[Shipping | None, Receiving | None]:
    text = host.read(config_path(host))
    data = json.loads(text) if text else {}
    ship, receive = data.get("ship"), data.get("receive")
    return (Shipping(**ship) if ship else None, Receiving(**receive) if receive else None)


def save(host: Host, ship: Shipping | None, receive: Receiving | None) -> None:
    data = {"ship": asdict(ship) if ship else None,
            "receive": asdict(receive) if receive else None}
    host.ensure_dir(host.paths.etc, 0o755)
    host.write(config_path(host), json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


# -- certificates ------------------------------------------------------------------

def pki(host: Host) -> Path:
    """Keys and certificates, root only: ca.key, ca.pem, server.key, server.pem
    on the log host; client.key, client.pem, fleet-ca.pem on a shipper."""
    return host.paths.etc / "fleet-logs"


def _key(host: Host, path: Path) -> None:
    """A P-256 private key at path (0600), unless there is one."""
    if host.read(path) is None:
        pem = host.query(["openssl", "genpkey", "-algorithm", "EC",
                          "-pkeyopt", "ec_paramgen_curve:P-256"]).out
        host.write(path, pem, 0o600)


def _sign(host: Host, csr: str, extensions: str, name: str) -> str:
    """csr signed by the fleet's CA with extensions (an openssl extfile)."""
    d = pki(host)
    ext = d / f"{name}.ext"
    host.write(ext, extensions, 0o600)
    return host.query(["openssl", "x509", "-req", "-in", "/dev/stdin", "-CA", d / "ca.pem",
                       "-CAkey", d / "ca.key", "-set_serial", f"0x{secrets.token_hex(16)}",
                       "-days", str(CERT_DAYS), "-extfile", ext], input=csr).out


def _alt_name(address: str) -> str:
    """The subjectAltName of address: as a DNS name (what rsyslog's x509/name
    compares), and as an IP address when it is one."""
    ip = re.fullmatch(r"[0-9.]+|\[?[0-9A-Fa-f:]+\]?", address)
    bare = address.strip("[]")
    return f"DNS:{bare}" + (f",IP:{bare}" if ip else "")


def pem(text: str, kind: str = "CERTIFICATE") -> list[str]:
    """The PEM blocks of kind in text (a remote step's output also holds what
    it says of its steps)."""
    return [m.group(0) + "\n" for m in re.finditer(
        rf"-----BEGIN {kind}-----\n[A-Za-z0-9+/=\n]+?-----END {kind}-----", text)]


def ensure_authority(host: Host, address: str) -> str:
    """The log host's CA and its server certificate for address (made once,
    the certificate again if the address changed); returns the CA's PEM."""
    d = pki(host)
    host.ensure_dir(d, 0o700)
    if host.read(d / "ca.pem") is None:
        _key(host, d / "ca.key")
        ca = host.query(["openssl", "req", "-x509", "-new", "-key", d / "ca.key",
                         "-days", str(CA_DAYS), "-subj", "/CN=siteops fleet logs CA",
                         "-addext", "basicConstraints=critical,CA:TRUE",
                         "-addext", "keyUsage=critical,keyCertSign,cRLSign"]).out
        host.write(d / "ca.pem", ca, 0o644)
    cert = host.read(d / "server.pem")
    if cert is None or subject(host, cert) != address.strip("[]"):
        _key(host, d / "server.key")
        csr = host.query(["openssl", "req", "-new", "-key", d / "server.key",
                          "-subj", f"/CN={address.strip('[]')}"]).out
        host.write(d / "server.pem", _sign(host, csr, (
            f"subjectAltName={_alt_name(address)}\nextendedKeyUsage=serverAuth\n"
            "keyUsage=critical,digitalSignature\n"), "server"), 0o644)
    return host.read(d / "ca.pem") or ""


def subject(host: Host, cert: str) -> str:
    """The CN of a PEM certificate."""
    out = host.query(["openssl", "x509", "-noout", "-subject", "-nameopt", "multiline"],
                     input=cert, ok=range(256)).out
    m = re.search(r"commonName\s*=\s*(\S+)", out)
    return m.group(1) if m else ""


def request(host: Host, name: str) -> str:
    """This host's certificate request (its key made here, once): CN name."""
    d = pki(host)
    host.ensure_dir(d, 0o700)
    _key(host, d / "client.key")
    return host.query(["openssl", "req", "-new", "-key", d / "client.key",
                       "-subj", f"/CN={name}"]).out


def sign_client(host: Host, csr: str) -> str:
    """On the log host: a shipper's request signed for client use only."""
    if "-----BEGIN CERTIFICATE REQUEST-----" not in csr:
        raise UsageError("not a certificate request")
    if host.query(["openssl", "req", "-noout", "-verify"], input=csr, ok=range(256)).code:
        raise UsageError("the certificate request does not verify")
    return _sign(host, csr, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
                 "client")


def install_client(host: Host, ca: str, cert: str) -> None:
    """A shipper's signed certificate and the CA it trusts, once openssl says
    the certificate chains to that CA and belongs to this host's key."""
    d = pki(host)
    for text, what in ((ca, "CA"), (cert, "certificate")):
        if "-----BEGIN CERTIFICATE-----" not in text or "PRIVATE KEY" in text:
            raise SiteopsError(f"the log host sent no {what}")
    host.write(d / "fleet-ca.pem", ca, 0o644)
    check = host.query(["openssl", "verify", "-CAfile", d / "fleet-ca.pem", "-purpose",
                        "sslclient", "/dev/stdin"], input=cert, ok=range(256))
    mine = host.query(["openssl", "pkey", "-in", d / "client.key", "-pubout"]).out
    theirs = host.query(["openssl", "x509", "-noout", "-pubkey"], input=cert).out
    if check.code or mine != theirs:
        raise SiteopsError("the log host's certificate for this host does not verify against "
                           "its CA or is not for this host's key; nothing was changed")
    host.write(d / "client.pem", cert, 0o644)


# -- rsyslog and logrotate -----------------------------------------------------------

def store(host: Host) -> Path:
    return host.paths.p("/var/log/siteops-fleet")


def tls(host: Host, ship: Shipping) -> str:
    """An omfwd action's TLS settings towards the log host: its name checked,
    its CA alone trusted, this host's client certificate shown."""
    d = pki(host)
    return ('\n           StreamDriver="gtls" StreamDriverMode="1" '
            'StreamDriverAuthMode="x509/name"\n'
            f'           StreamDriverPermittedPeers="{ship.address.strip("[]")}" '
            f'StreamDriver.CAFile="{d / "fleet-ca.pem"}"\n'
            f'           StreamDriver.CertFile="{d / "client.pem"}" '
            f'StreamDriver.KeyFile="{d / "client.key"}"')


def files(host: Host, host_name: str) -> dict[Path, str]:
    """The rsyslog and logrotate files of what this host does for the fleet
    (its sites' own shipping is in their drain files, drains.site_conf)."""
    from . import drains  # it renders the sites' files with this module's actions
    ship, receive = load(host)
    out: dict[Path, str] = {}
    if ship:
        out[host.paths.rsyslog_d / "55-siteops-fleet.conf"] = render(
            "rsyslog/fleet.conf", log=host.paths.actions_log, hostname=host_name,
            ruleset_queue=drains.RULESET_QUEUE,
            actions=action(host, ship, "fleet.actions", ACTIONS))
    if receive:
        d = pki(host)
        out[host.paths.rsyslog_d / "40-siteops-receiver.conf"] = render(
            "rsyslog/receiver.conf", port=receive.port, store=store(host),
            ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")
        out[host.paths.p("/etc/logrotate.d") / "siteops-fleet-logs"] = render(
            "logrotate/fleet-logs", store=store(host), days=receive.keep_days,
            size=receive.max_size)
    return out


def action(host: Host, ship: Shipping, drain: str, url: str) -> str:
    """The omfwd action of one source towards the log host (queue siteops-DRAIN)."""
    from .drains import ENQUEUE_WAIT_MS, QUEUE_DISK, QUEUE_MEMORY  # drains renders with this
    return render("rsyslog/action.conf", url=f"the fleet's log host {ship.host} ({url})",
                  id=drain, target=ship.address.strip("[]"), port=ship.port,
                  tls=tls(host, ship), memory=QUEUE_MEMORY, disk=QUEUE_DISK,
                  wait=ENQUEUE_WAIT_MS)


def stale(host: Host, wanted: dict[Path, str]) -> list[Path]:
    paths = [host.paths.rsyslog_d / "55-siteops-fleet.conf",
             host.paths.rsyslog_d / "40-siteops-receiver.conf",
             host.paths.p("/etc/logrotate.d") / "siteops-fleet-logs"]
    return [p for p in paths if p not in wanted and p.exists()]


# -- the store: what `logs NAME --all-hosts` reads -------------------------------------

def _stamp(line: str) -> datetime:
    try:
        return datetime.fromisoformat(line.split(" ", 1)[0])
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def _lines(path: Path) -> Iterator[str]:
    """A store file's lines, its rotated copy (.1) first; no link followed."""
    for p in (path.with_name(path.name + ".1"), path):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(fd, "r", errors="replace") as fh:
            yield from (line.rstrip("\n") for line in fh)


def query(host: Host, site: str, since: float | None, grep: str | None,
          limit: int) -> list[str]:
    """The last limit lines of site's logs from every host in the store, in
    time order (each line: time, host, program, message), written since
    (a Unix time) and holding grep, if given."""
    root = store(host)
    paths = sorted(root.glob(f"*/{site}.log")) if root.is_dir() else []
    after = datetime.fromtimestamp(since, timezone.utc) if since is not None else None

    def keep(line: str) -> bool:
        return (grep is None or grep in line) and (after is None or _stamp(line) >= after)
    merged = heapq.merge(*(filter(keep, _lines(p)) for p in paths), key=_stamp)
    tail: list[str] = []
    for line in merged:
        tail.append(line)
        if len(tail) > 2 * limit:
            del tail[:-limit]
    return tail[-limit:]


def usage(host: Host) -> dict:
    """The store's size in bytes and the hosts it holds."""
    root = store(host)
    total, hosts = 0, []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            if d.is_dir() and not d.is_symlink():
                hosts.append(d.name)
                total += sum(f.stat().st_size for f in d.iterdir() if f.is_file())
    return {"bytes": total, "hosts": hosts}
