"""Log drains: a site's logs shipped to collectors by the distribution's
rsyslog (imfile reads the files `logs NAME` reads, omfwd sends RFC 5424
records over TLS with RFC 5425 octet-counted framing, each drain through
a disk-assisted queue of its own).

siteops renders /etc/rsyslog.d/50-siteops.conf (imfile, the record's
template) and one 60-siteops-NAME.conf per site with drains, and each
drain's CA certificate under /etc/siteops/drains/; the whole set is
checked with `rsyslogd -N1` before any of it is written, and rsyslog
restarted once (it has no reload). A run stopped between the files and
the restart leaves a note, so the next run restarts even though the files
then look unchanged."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import fleetlogs, packages, safefs, systemd
from .logfiles import backwards
from .errors import SiteopsError, UsageError
from .host import CANDIDATE, Host
from .model import Drain, Site
from .templates import render

PACKAGES = ("rsyslog", "rsyslog-gnutls")
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"
QUEUE_MEMORY = 20000       # records held in memory per drain before the disk takes them
QUEUE_DISK = "256m"        # per drain: past it, the site's reading waits (ENQUEUE_WAIT)
# How long a record waits for room in a drain's queue before it is dropped
# (and counted): long enough that a burst never loses one while the queue
# spills to disk; at most this long a restart of rsyslog can be held up.
ENQUEUE_WAIT_MS = 60000
RULESET_QUEUE = 10000      # records of a site read ahead of its drains
SPOOL = "/var/spool/rsyslog"  # Debian's and Ubuntu's rsyslog work directory
STATS_INTERVAL = 60        # seconds between two of rsyslog's statistics records
# A drain is failing when it has delivered nothing for this long while records
# wait in its queue (SITEOPS_DRAIN_FAILING_AFTER: shorter, for the tests only).
FAILING_AFTER = int(os.environ.get("SITEOPS_DRAIN_FAILING_AFTER", "3600"))
HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True)
class Target:
    """Where a drain's URL points."""
    tls: bool
    host: str
    port: int


def parse_url(url: str, plain: bool = False) -> Target:
    """A drain's URL checked: syslog+tls://HOST:PORT, or syslog://HOST:PORT
    only with plain (its records cross the network readable)."""
    usage = "a drain is syslog+tls://HOST:PORT (or syslog://HOST:PORT with --plain)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UsageError(f"{usage}; {url!r}: {exc}") from None
    if parts.scheme not in ("syslog+tls", "syslog"):
        raise UsageError(f"{usage}, not {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment \
            or parts.path not in ("", "/"):
        raise UsageError(f"{usage}: nothing after the port, no user or password ({url!r})")
    host = (parts.hostname or "").lower()
    if port is None or not host:
        raise UsageError(f"{usage}: {url!r} lacks the " + ("port" if host else "host"))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not HOSTNAME.match(host):
            raise UsageError(f"{usage}: {host!r} is not a host name") from None
    if parts.scheme == "syslog" and not plain:
        raise UsageError(f"{url} sends the site's logs unencrypted: use syslog+tls://, or pass "
                         "--plain to say that is meant")
    if parts.scheme == "syslog+tls" and plain:
        raise UsageError("--plain is for syslog:// URLs only")
    return Target(parts.scheme == "syslog+tls", host, port)


def check_ca(host: Host, text: str) -> str:
    """The CA file's text, if it is PEM certificates only (openssl reads the
    first); UsageError otherwise."""
    if "PRIVATE KEY" in text:
        raise UsageError("the --ca file holds a private key: give only the CA's certificate")
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError("the --ca file is not a PEM certificate")
    try:
        host.check_candidate("drain-ca.pem", text, ["openssl", "x509", "-noout", "-in", CANDIDATE],
                             "the --ca file")
    except SiteopsError as exc:  # openssl cannot read it
        raise UsageError(str(exc)) from None
    return text


def drain_id(site: str, url: str) -> str:
    """A drain's stable name: its queue's and CA file's (NAME-HASH of its URL)."""
    return f"{site}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def ca_path(host: Host, site: str, drain: Drain) -> Path:
    return host.paths.drains_dir / f"{drain_id(site, drain.url)}.pem"


def hostname(host: Host) -> str:
    """The host's name for the records: /etc/hostname (rsyslog's own guess
    follows /etc/hosts, where 127.0.0.1 may come first as localhost); "-"
    (RFC 5424's nil) if it is not a host name."""
    name = (host.read(host.paths.p("/etc/hostname")) or "").strip()
    return name if HOSTNAME.match(name.lower()) else "-"


def site_conf(host: Host, site: Site, host_name: str | None = None,
              ship: fleetlogs.Shipping | None = None) -> str:
    """The site's rsyslog file: its logs read, each drain's action, and the
    fleet's log host's if ship (the records' HOSTNAME: host_name, else
    hostname())."""
    logs = host.paths.of(site.name).logs
    actions = [fleetlogs.action(host, ship, f"{site.name}.fleet", site.name)] if ship else []
    for drain in site.drains:
        target = parse_url(drain.url, plain=drain.url.startswith("syslog:"))
        tls = ""
        if target.tls:
            ca = ca_path(host, site.name, drain) if drain.ca else SYSTEM_CAS
            tls = ('\n           StreamDriver="gtls" StreamDriverMode="1" '
                   'StreamDriverAuthMode="x509/name"\n'
                   f'           StreamDriverPermittedPeers="{target.host}" '
                   f'StreamDriver.CAFile="{ca}"')
        actions.append(render("rsyslog/action.conf", url=drain.url,
                              id=drain_id(site.name, drain.url), target=target.host,
                              port=target.port, tls=tls, memory=QUEUE_MEMORY, disk=QUEUE_DISK,
                              wait=ENQUEUE_WAIT_MS))
    return render("rsyslog/site.conf", name=site.name, logs=logs, field=len(logs.parts) + 1,
                  ruleset_queue=RULESET_QUEUE, wait_s=ENQUEUE_WAIT_MS // 1000,
                  hostname=host_name or hostname(host), actions="".join(actions))


def files(host: Host, sites: list[Site], host_name: str | None = None) -> dict[Path, str]:
    """Every file of the drains of sites (all the registry's) and of the
    fleet's log host (fleetlogs.py): each site's (site_files) and the host's
    (host_files)."""
    ship, _ = fleetlogs.load(host)
    host_name = host_name or hostname(host)
    out: dict[Path, str] = {}
    for site in sites:
        out.update(site_files(host, site, ship, host_name))
    return {**out, **host_files(host, sites, ship, host_name)}


def site_files(host: Host, site: Site, ship: fleetlogs.Shipping | None,
               host_name: str) -> dict[Path, str]:
    """The site's own drain files: its rsyslog file and each drain's CA; none
    when it has no drain and the host ships nowhere (ship)."""
    if not (site.drains or ship):
        return {}
    out = {host.paths.rsyslog_site(site.name): site_conf(host, site, host_name, ship)}
    out.update({ca_path(host, site.name, d): d.ca for d in site.drains if d.ca})
    return out


def host_files(host: Host, sites: list[Site], ship: fleetlogs.Shipping | None,
               host_name: str) -> dict[Path, str]:
    """The drain files of the host as a whole for sites (all the registry's):
    the shared file that reads the logs and the statistics' logrotate, when a
    site has a drain or the host ships; the fleet's files (fleetlogs.files)."""
    out: dict[Path, str] = {}
    if ship or any(s.drains for s in sites):  # files that read logs (imfile)
        out[host.paths.rsyslog_shared] = render("rsyslog/siteops.conf", interval=STATS_INTERVAL,
                                                stats=host.paths.drain_stats)
        out[host.paths.logrotate_drains] = render("logrotate/drains",
                                                  stats=host.paths.drain_stats)
    out.update(fleetlogs.files(host, host_name))
    return out


def stale(host: Host, wanted: dict[Path, str]) -> list[Path]:
    """siteops's drain files that no drain wants any more."""
    found = [*host.paths.rsyslog_d.glob("60-siteops-*.conf"),
             *(host.paths.drains_dir.glob("*.pem") if host.paths.drains_dir.is_dir() else [])]
    found += [p for p in (host.paths.rsyslog_shared, host.paths.logrotate_drains) if p.exists()]
    return sorted(p for p in [*found, *fleetlogs.stale(host, wanted)] if p not in wanted)


def pending_marker(host: Host) -> Path:
    return host.paths.state / "rsyslog-restart-pending"


def ensure(host: Host, sites: list[Site]) -> bool:
    """rsyslog ships every drain of sites (all the registry's) and nothing
    else of siteops's: the files checked together with `rsyslogd -N1`,
    written, rsyslog restarted if any changed. True if it was."""
    wanted = files(host, sites)
    gone = stale(host, wanted)
    changed = [p for p, text in wanted.items() if host.read(p) != text]
    pending = pending_marker(host).exists()
    if not (changed or gone or pending):
        return False
    with host.step("rsyslog: the log drains' files, checked together (rsyslogd -N1)"):
        if wanted:
            packages.install(host, packages.missing(host, PACKAGES))
            for path, text in wanted.items():  # the CAs first: the check reads them
                if path.suffix == ".pem":
                    host.ensure_dir(path.parent, 0o755)
                    host.write(path, text, 0o644)
            shared = host.paths.rsyslog_shared  # first: it loads imfile, defines the template
            confs = [wanted.get(shared, "")] + [text for p, text in sorted(wanted.items())
                                        if p.suffix == ".conf" and p != shared
                                        and p.parent == shared.parent]
            host.check_candidate("rsyslog-siteops.conf",
                                 f'global(workDirectory="{SPOOL}")\n' + "\n".join(confs),
                                 ["rsyslogd", "-N1", "-f", CANDIDATE],
                                 "the log drains' rsyslog configuration")
        host.ensure_dir(host.paths.state, 0o700)
        host.write(pending_marker(host), "a restart of rsyslog is due\n", 0o600)
        for path, text in wanted.items():
            host.write(path, text, 0o644)
        for path in gone:
            host.remove(path)
    with host.step("rsyslog restarted (it has no reload)"):
        # Drain changes in quick succession restart it often: not refused by
        # the start rate limit (Debian 13's rsyslog met it).
        if wanted:
            host.run(["systemctl", "enable", "--quiet", "rsyslog"])
            systemd.deliberately(host, "restart", ["rsyslog"])
        elif host.query(["systemctl", "is-active", "--quiet", "rsyslog"], ok=range(256)).code == 0:
            systemd.deliberately(host, "restart", ["rsyslog"])
        host.remove(pending_marker(host))
    return True


def failing(host: Host, now: float | None = None) -> dict[str, dict]:
    """{drain id: {waiting, since}} of the drains that have delivered nothing
    for FAILING_AFTER seconds while records waited in their queues, read
    from the end of rsyslog's statistics: every record of that span shows
    records waiting and no record leaving the queue."""
    now = time.time() if now is None else now
    fh = safefs.open_read(host.paths.drain_stats)
    if fh is None:
        return {}
    samples: dict[str, list[tuple[float, int, int]]] = {}  # id: [(time, size, enqueued)]
    with fh:
        for line in backwards(fh):
            stamp, sep, body = line.decode(errors="replace").partition(": {")
            try:
                at = time.mktime(time.strptime(stamp, "%a %b %d %H:%M:%S %Y"))
                record = json.loads("{" + body) if sep else {}
            except (ValueError, OverflowError):
                continue
            if at < now - FAILING_AFTER - 2 * STATS_INTERVAL:
                break
            name = str(record.get("name", ""))
            if record.get("origin") == "core.queue" and name.startswith("siteops-") \
                    and name.endswith(" queue"):
                samples.setdefault(name.removeprefix("siteops-").removesuffix(" queue"),
                                   []).append((at, int(record.get("size", 0)),
                                               int(record.get("enqueued", 0))))
    out = {}
    for drain, seen in samples.items():
        seen.sort()
        first, last = seen[0], seen[-1]
        left = (last[2] - first[2]) - (last[1] - first[1])  # records that left the queue
        if last[0] - first[0] >= FAILING_AFTER - STATS_INTERVAL and left <= 0 \
                and all(size > 0 for _, size, _ in seen):
            out[drain] = {"waiting": last[1], "since": first[0]}
    return out
