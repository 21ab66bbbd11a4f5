"""Making one inventory host the fleet's log host (hosts logs-to), and
asking it for a site's lines from every host (logs NAME --all-hosts).

Run on the operator's host: the log host makes its CA and receiver; then
every host (this one, each inventory host, the log host itself) makes its
own key and request, the log host signs it, and the host ships its sites'
logs and its action log there. Keys never cross the network; the requests
and certificates go over siteops's pinned SSH. Each host's step is whole
(its files checked with `rsyslogd -N1`, then written, rsyslog restarted):
a run stopped part way leaves some hosts shipping and converges when run
again."""

from __future__ import annotations

import json

from .. import drains, firewall, fleet, fleetlogs, registry
from ..errors import SiteopsError
from ..fleet import Remote
from ..host import Host, clean


def _remote(host: Host, remote: Remote, *args: str, input: str | None = None) -> str:
    res = fleet.siteops(host, remote, "hosts", *args, input=input, timeout=300)
    if res.code != 0:
        raise SiteopsError(f"host {remote.name}: {clean(res.err).strip()[-400:]}")
    return res.out


def serve(host: Host, receive: fleetlogs.Receiving) -> str:
    """This host is the log host: CA, server certificate, receiver, retention,
    its port open. Returns the CA's PEM."""
    with registry.locked(host, "hosts logs-to --receive serve") as data:
        ca = fleetlogs.ensure_authority(host, receive.address)
        ship, _ = fleetlogs.load(host)
        fleetlogs.save(host, ship, receive)
        firewall.ensure(host)
        drains.ensure(host, list(data.sites.values()))
    return ca


def ship(host: Host, to: fleetlogs.Shipping, ca: str, cert: str) -> None:
    """This host ships its sites' logs and its action log to the log host."""
    with registry.locked(host, "hosts logs-to --receive ship") as data:
        fleetlogs.install_client(host, ca, cert)
        _, receive = fleetlogs.load(host)
        fleetlogs.save(host, to, receive)
        drains.ensure(host, list(data.sites.values()))


def logs_to(host: Host, name: str, receive: fleetlogs.Receiving) -> list[str]:
    """Make inventory host name the fleet's log host and every host (this one
    and the inventory's) ship there; returns the hosts that do."""
    remotes = fleet.load(host)
    target = fleet.get(host, name)
    for each in remotes.values():  # every host first: nothing changed if one is not right
        fleet.check_version(host, each)
    to = fleetlogs.Shipping(name, target.address, receive.port)
    if host.dry_run:  # nothing asked of any host but its version
        host.say(f"would make {name} the fleet's log host and ship there from "
                 f"{', '.join([fleet.LOCAL, *remotes])}; each source gets this action:\n"
                 + fleetlogs.action(host, to, "SITE.fleet", "SITE"))
        return []
    with host.step(f"{name}: the fleet's log host (its CA, a certificate for {target.address}, "
                   f"TLS on port {receive.port}, {receive.keep_days} days kept)"):
        ca = "".join(fleetlogs.pem(_remote(
            host, target, "logs-to", name, "--receive", "serve", "--address", target.address,
            "--port", str(receive.port), "--keep-days", str(receive.keep_days),
            "--max-size", receive.max_size))[:1])
    shipped = []
    hosts: list[Remote | None] = [None, *remotes.values()]
    for remote in hosts:
        label = remote.name if remote else fleet.LOCAL
        with host.step(f"{label}: ships its logs to {name} (its key made there, signed by "
                       f"{name}'s CA)"):
            if remote is None:
                csr = fleetlogs.request(host, drains.hostname(host))
            else:
                csr = "".join(fleetlogs.pem(_remote(host, remote, "logs-to", name, "--receive",
                                                    "request"), "CERTIFICATE REQUEST"))
            cert = "".join(fleetlogs.pem(_remote(host, target, "logs-to", name, "--receive",
                                                 "sign", input=csr))[:1])
            if remote is None:
                ship(host, to, ca, cert)
            else:
                _remote(host, remote, "logs-to", name, "--receive", "ship", "--address",
                        target.address, "--port", str(receive.port), input=ca + cert)
        shipped.append(label)
    return shipped


def all_hosts(host: Host, site: str, since: float | None, grep: str | None,
              limit: int) -> list[str]:
    """site's lines from every host, asked of the log host (this one, or the
    one this host ships to)."""
    ship, receive = fleetlogs.load(host)
    if receive:
        return fleetlogs.query(host, site, since, grep, limit)
    if not ship:
        raise SiteopsError("this host ships its logs to no log host: make one with "
                           "`hosts logs-to NAME` (docs/hosts.md)")
    remote = fleet.get(host, ship.host)
    query = json.dumps({"since": since, "grep": grep, "lines": limit})
    res = fleet.siteops(host, remote, "logs", site, "--from-store", input=query, timeout=120)
    if res.code != 0:
        raise SiteopsError(f"log host {remote.name}: {clean(res.err).strip()[-400:]}")
    return res.out.splitlines()
