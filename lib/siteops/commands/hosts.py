"""hosts: the other servers siteops reaches over SSH (move-site, fleet views)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sys

from .. import cli, drains, fleet, fleetlogs, validate
from ..ops import fleetlogs as fleetlogs_op
from ..errors import UsageError
from ..host import Host
from ..journal import now

DESCRIPTION = """\
The inventory of other hosts running siteops, in /etc/siteops/hosts.json
(root-only). SSH is the only way siteops reaches them: `audit --all-hosts`,
`sites list --all-hosts` and `sites usage --all-hosts` ask each at once.

  add NAME ssh://USER@ADDRESS[:PORT] [--key FILE] [--fingerprint SHA256:...]
         connects once, shows the host's SSH key fingerprint and pins it in
         /etc/siteops/fleet_known_hosts: every later connection accepts that
         key only, and a changed key is refused with both fingerprints shown
         (never learnt). --fingerprint refuses any other key at once: read it
         on the host with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`.
         The host must run this very siteops (same files): if it runs none,
         or another version, `add` says so and prints the command that
         installs this one there.
  list   the inventory [--json], and where this host's logs go
  logs-to NAME [--port P] [--keep-days N] [--max-size SIZE]
         makes host NAME the fleet's log host: NAME keeps a CA of its own
         and receives on port P (default 6514, opened in its UFW) over TLS;
         this host and every inventory host (NAME too) make a key, NAME
         signs it, and each then ships its sites' logs and its action log
         there (rsyslog, as `logs NAME drain`). NAME keeps each host's
         lines by site in /var/log/siteops-fleet/HOST/SITE.log for N days
         (default 14), a file rotated early past SIZE (default 100M).
         `logs SITE --all-hosts` then reads them. Run it again after
         adding a host.
  remove NAME
         forgets the host and its pinned key
  version
         this siteops's version (a digest of its files)
"""

EPILOG = """\
examples:
  sudo hosts add big ssh://root@203.0.113.7 --key /root/.ssh/fleet_ed25519
  sudo hosts add edge ssh://root@edge.example.com:2222 --fingerprint SHA256:Vx3...
  sudo hosts list
  sudo audit --all-hosts
  sudo hosts logs-to big --keep-days 30 --max-size 1G
  sudo logs shop --all-hosts --since 1h --grep 'status=500'
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("hosts", DESCRIPTION, EPILOG)
    p.add_argument("action", choices=("add", "list", "remove", "version", "logs-to"))
    p.add_argument("name", nargs="?", type=fleet.host_name, help="the host's name here")
    p.add_argument("url", nargs="?", metavar="ssh://USER@ADDRESS[:PORT]")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="add: the private key to log in with (default: root's own keys)")
    p.add_argument("--fingerprint", metavar="SHA256:...",
                   help="add: the host key fingerprint to expect (refuse any other)")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    p.add_argument("--port", type=validate.number("--port", 1, 65535), default=fleetlogs.PORT,
                   help=f"logs-to: the log host's TLS port (default {fleetlogs.PORT})")
    p.add_argument("--keep-days", type=validate.number("--keep-days", 1, 3650),
                   default=fleetlogs.KEEP_DAYS, metavar="N",
                   help=f"logs-to: days the log host keeps (default {fleetlogs.KEEP_DAYS})")
    p.add_argument("--max-size", type=fleetlogs.size, default=fleetlogs.MAX_SIZE,
                   metavar="SIZE", help="logs-to: a stored file is rotated early past this "
                   f"(default {fleetlogs.MAX_SIZE})")
    # The steps logs-to runs on each host over SSH; not meant to be typed.
    p.add_argument("--receive", choices=("serve", "request", "sign", "ship"),
                   help=argparse.SUPPRESS)
    p.add_argument("--address", type=fleet.address, help=argparse.SUPPRESS)
    return p


def add(host: Host, args: argparse.Namespace) -> None:
    if not args.name or not args.url:
        raise UsageError("add needs NAME and ssh://USER@ADDRESS[:PORT]")
    if args.key is not None and not args.key.is_file():
        raise UsageError(f"--key {args.key}: no such file")
    remote = fleet.parse_url(args.name, args.url, str(args.key) if args.key else None)
    have = fleet.load(host)
    old = have.get(args.name)
    if old and old.url != remote.url:
        raise UsageError(f"host {args.name} is already {old.url}; hosts remove {args.name} first")
    lines = fleet.scan(host, remote)
    if not lines:
        raise fleet.Unreachable(f"no SSH answer from {remote.address}:{remote.port} within "
                                f"{fleet.CONNECT_TIMEOUT} s; nothing was changed")
    fingerprint = fleet.key_fingerprint(lines[0])
    if old and old.fingerprint != fingerprint:
        raise fleet.Unreachable(fleet.describe_failure(host, old, "Host key verification failed"))
    if args.fingerprint and args.fingerprint != fingerprint:
        raise UsageError(f"host {args.name} offers key {fingerprint}, not {args.fingerprint}: "
                         "refused; nothing was changed")
    host.say(f"host key of {args.name} ({remote.url}): {lines[0].split()[1]} {fingerprint}")
    remote = fleet.Remote(**{**remote.__dict__, "fingerprint": fingerprint, "added": now()})
    before = host.read(fleet.known_hosts(host))
    with host.step(f"host {args.name} pinned and added"):
        fleet.pin(host, remote, lines[0])
        try:
            fleet.run(host, remote, ["true"], timeout=fleet.CONNECT_TIMEOUT + 20)
        except fleet.Unreachable:
            if before is None:
                host.remove(fleet.known_hosts(host))
            else:
                host.write(fleet.known_hosts(host), before, 0o600)
            raise
        fleet.save(host, {**have, args.name: remote})
    try:
        fleet.check_version(host, remote)
    except UsageError as exc:
        host.say(f"warning: {exc}")


def listing(host: Host, args: argparse.Namespace) -> None:
    remotes = fleet.load(host)
    if args.json:
        print(json.dumps({"hosts": [dict(r.__dict__, url=r.url) for r in remotes.values()],
                          "logs": fleet_logs(host)}, indent=2))
        return
    if not remotes:
        host.say("no hosts in the inventory (hosts add NAME ssh://root@ADDRESS)")
    for r in remotes.values():
        host.say(f"{r.name:16} {r.url:40} {r.fingerprint}  added {(r.added or '?')[:10]}")
    logs = fleet_logs(host)
    if logs["ships_to"]:
        to = logs["ships_to"]
        host.say(f"logs: shipped to {to['host']} ({to['address']}:{to['port']})")
    if logs["log_host"]:
        kept = logs["log_host"]
        host.say(f"logs: this is the fleet's log host: port {kept['port']}, {kept['keep_days']} "
                 f"days kept, files rotated past {kept['max_size']}; store "
                 f"{kept['bytes'] / 2**20:.1f} MB from {len(kept['hosts'])} host(s)")


def fleet_logs(host: Host) -> dict:
    """Where this host's logs go, and what it keeps if it is the log host."""
    ship, receive = fleetlogs.load(host)
    return {"ships_to": ship.__dict__ if ship else None,
            "log_host": {**receive.__dict__, **fleetlogs.usage(host)} if receive else None}


def logs_to(host: Host, args: argparse.Namespace) -> None:
    if not args.name:
        raise UsageError("logs-to needs NAME, a host of the inventory")
    if args.receive:  # one host's step, its address given by the host that runs logs-to
        receive_step(host, args, fleetlogs.Receiving(args.address or "", args.port,
                                                     args.keep_days, args.max_size))
        return
    target = fleet.get(host, args.name)
    receive = fleetlogs.Receiving(target.address, args.port, args.keep_days, args.max_size)
    shipped = fleetlogs_op.logs_to(host, args.name, receive)
    host.say(f"{', '.join(shipped)} ship their logs to {args.name} "
             f"({target.address}:{args.port}); `logs SITE --all-hosts` reads them")


def receive_step(host: Host, args: argparse.Namespace, receive: fleetlogs.Receiving) -> None:
    """One host's part of logs-to (run over SSH; PEM text on stdin and stdout)."""
    if args.receive in ("serve", "ship") and not args.address:
        raise UsageError(f"--receive {args.receive} needs --address")
    if args.receive == "serve":
        sys.stdout.write(fleetlogs_op.serve(host, receive))
    elif args.receive == "request":
        sys.stdout.write(fleetlogs.request(host, drains.hostname(host)))
    elif args.receive == "sign":
        sys.stdout.write(fleetlogs.sign_client(host, sys.stdin.read()))
    else:
        parts = fleetlogs.pem(sys.stdin.read())
        if len(parts) != 2:
            raise UsageError("--receive ship reads the CA and this host's certificate")
        fleetlogs_op.ship(host, fleetlogs.Shipping(args.name, args.address, args.port), *parts)


def remove(host: Host, args: argparse.Namespace) -> None:
    if not args.name:
        raise UsageError("remove needs NAME")
    remotes = fleet.load(host)
    remote = remotes.pop(args.name, None)
    if remote is None:
        raise UsageError(f"no host {args.name!r} in the inventory; nothing was changed")
    with host.step(f"host {args.name} removed"):
        fleet.save(host, remotes)
        fleet.unpin(host, remote)


def run(host: Host, args: argparse.Namespace) -> None:
    if args.action != "add" and (args.url or args.key or args.fingerprint):
        raise UsageError("an address, --key and --fingerprint go with add")
    if args.action != "logs-to" and (args.receive or args.address):
        raise UsageError("--receive and --address go with logs-to")
    {"add": add, "remove": remove, "list": listing, "logs-to": logs_to,
     "version": lambda *_: print(fleet.version())}[args.action](host, args)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("hosts", build_parser(), run, argv, host)
