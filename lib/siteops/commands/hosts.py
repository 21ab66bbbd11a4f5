"""hosts: the other servers siteops reaches over SSH (move-site, fleet views)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import fleet
from .. import cli
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
  list   the inventory [--json]
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
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("hosts", DESCRIPTION, EPILOG)
    p.add_argument("action", choices=("add", "list", "remove", "version"))
    p.add_argument("name", nargs="?", type=fleet.host_name, help="the host's name here")
    p.add_argument("url", nargs="?", metavar="ssh://USER@ADDRESS[:PORT]")
    p.add_argument("--key", type=Path, metavar="FILE",
                   help="add: the private key to log in with (default: root's own keys)")
    p.add_argument("--fingerprint", metavar="SHA256:...",
                   help="add: the host key fingerprint to expect (refuse any other)")
    p.add_argument("--json", action="store_true", help="list: print JSON")
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
        print(json.dumps({"hosts": [dict(r.__dict__, url=r.url) for r in remotes.values()]},
                         indent=2))
        return
    if not remotes:
        host.say("no hosts in the inventory (hosts add NAME ssh://root@ADDRESS)")
    for r in remotes.values():
        host.say(f"{r.name:16} {r.url:40} {r.fingerprint}  added {(r.added or '?')[:10]}")


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
    {"add": add, "remove": remove, "list": listing,
     "version": lambda *_: print(fleet.version())}[args.action](host, args)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("hosts", build_parser(), run, argv, host)
