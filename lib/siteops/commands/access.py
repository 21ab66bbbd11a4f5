"""access: SSH keys that act on one site only (its tenants: a client, a team, a CI job)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import access, cli, registry, users, validate
from ..errors import UsageError
from ..host import Host
from ..journal import now, who
from ..model import DEPLOY_ROLE, READ_ROLE, Key
from .tenant import HELP

DESCRIPTION = f"""\
Give a site's owner an SSH key that acts on that site only. With it they log
in as the deploy user (ssh deploy@HOST COMMAND, git push deploy@HOST:NAME),
and run only these commands, for the sites the key was added to:

{HELP}

Roles: deploy (all of the above) and read (logs, sites show/usage, backup
--list). A read key sees no configuration; a deploy key may print it with
config --show (it can deploy code that reads .env anyway).

A key gets no shell, no pty, no port, agent or X11 forwarding, no ~/.ssh/rc
and no environment of its own; what it asks for is checked word by word as
root and anything else is refused in one line with nothing changed. The keys
live in /etc/ssh/siteops-keys/deploy (root-owned, rendered from the registry);
a removed key stops working for every login after the removal. Each use is
appended to /var/log/siteops/actions.jsonl; audit lists the keys, warns on
one unused for {access.UNUSED_DAYS} days and on an authorized_keys line siteops
did not write.

  add KEYFILE    add a public key (a .pub file, or - for standard input);
                 adding it again changes its label and role
  list           the site's keys: fingerprint, role, label, added, last use
  remove FP      remove the key with that fingerprint (SHA256:...)
"""

EPILOG = """\
examples:
  sudo access shop add alice.pub --label "alice laptop"
  sudo access shop add ci.pub --label ci --role deploy
  sudo access shop add auditor.pub --role read
  sudo access shop list --json
  sudo access shop remove SHA256:2kT7...
  # the tenant, from their machine:
  git push deploy@HOST:shop main
  ssh deploy@HOST logs shop -f
  printf %s "$STRIPE_KEY" | ssh deploy@HOST config shop set STRIPE_KEY
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("access", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("action", choices=("add", "list", "remove"))
    p.add_argument("what", nargs="?", metavar="KEYFILE|FINGERPRINT",
                   help="add: the public key file (- for stdin); remove: its fingerprint")
    p.add_argument("--label", type=access.label, metavar="TEXT",
                   help="add: who or what holds the key (default: the key's comment)")
    p.add_argument("--role", choices=(DEPLOY_ROLE, READ_ROLE), default=None,
                   help=f"add: {DEPLOY_ROLE} (default) or {READ_ROLE}")
    p.add_argument("--json", action="store_true", help="list: print JSON")
    return p


def read_key(what: str) -> access.PublicKey:
    if what == "-":
        return access.parse(sys.stdin.read(65536), "standard input")
    path = Path(what)
    try:
        text = path.read_text(errors="replace")[:65536] if path.stat().st_size < 2**20 else ""
    except OSError as exc:
        raise UsageError(f"cannot read {what}: {exc.strerror}; nothing was changed") from None
    return access.parse(text, what)


def check_not_operator(host: Host, key: access.PublicKey) -> None:
    """A key with full access already (the operator's, root's) cannot be made a
    tenant key: sshd would match its unrestricted line first."""
    deploy = users.lookup(host, users.DEPLOY_USER)
    if deploy is None:
        raise UsageError("there is no deploy user: run bootstrap first")
    full = [k.fingerprint for k in access.operator_keys(host, deploy.home)]
    full += [k.fingerprint for k in access.key_lines(
        host.read(host.paths.authorized_keys("/root")) or "")]
    if key.fingerprint in full:
        raise UsageError(f"{key.fingerprint} is an operator key (in deploy's or root's "
                         "authorized_keys, with full access): give the tenant a key of its "
                         "own; nothing was changed")


def add(host: Host, args: argparse.Namespace) -> None:
    if not args.what:
        raise UsageError("add needs the public key file (or - for standard input)")
    key = read_key(args.what)
    access.check_strength(host, key)
    check_not_operator(host, key)
    if not host.paths.tenant_keys.parent.is_dir() and not host.dry_run:
        raise UsageError("this host has no tenant keys file yet: run bootstrap (this version) "
                         "first; nothing was changed")
    label = args.label or (access.label(key.comment) if key.comment and
                           access.LABEL.fullmatch(key.comment.strip()) else "")
    with registry.locked(host, f"access {args.name} add") as data:
        site = registry.get_site(data, args.name)
        old = next((k for k in site.keys if k.fingerprint == key.fingerprint), None)
        if old is None:
            site.keys.append(Key(key.fingerprint, key.text, label, args.role or DEPLOY_ROLE,
                                 now(), who()))
            said = f"added {key.fingerprint} ({args.role or DEPLOY_ROLE}) to {args.name}"
        else:
            old.label = args.label or old.label
            old.role = args.role or old.role
            said = f"{key.fingerprint} on {args.name}: role {old.role}, label {old.label!r}"
        site.updated = now()
        save(host, data, f"tenant key {key.fingerprint[:20]}... of {args.name}")
    host.say(said)


def save(host: Host, data: registry.Registry, what: str) -> None:
    """The registry first, then the keys file from it (under the registry
    lock): stopped between the two, the registry is right (it is what the
    tenant command obeys) and a run again, or audit --fix, rewrites the file."""
    with host.step(f"{what} (registry)"):
        registry.save(host, data)
    with host.step("tenant keys file"):
        access.write(host, list(data.sites.values()))


def remove(host: Host, args: argparse.Namespace) -> None:
    if not args.what or not access.FINGERPRINT.fullmatch(args.what):
        raise UsageError("remove needs the key's fingerprint (SHA256:..., as `access NAME "
                         "list` shows it)")
    with registry.locked(host, f"access {args.name} remove") as data:
        site = registry.get_site(data, args.name)
        kept = [k for k in site.keys if k.fingerprint != args.what]
        if len(kept) == len(site.keys):
            # A run stopped after the registry step left the file behind: finish it.
            leftover = args.what in (host.read(host.paths.tenant_keys) or "") and \
                not access.sites_of(list(data.sites.values()), args.what)
            if not leftover:
                raise UsageError(f"site {args.name} has no key {args.what}; nothing was "
                                 "changed")
            with host.step("tenant keys file"):
                access.write(host, list(data.sites.values()))
        else:
            site.keys = kept
            site.updated = now()
            save(host, data, f"tenant key {args.what[:20]}... of {args.name} removed")
    host.say(f"removed {args.what} from {args.name}: logins with it no longer act on it")


def listing(host: Host, args: argparse.Namespace) -> None:
    site = registry.get_site(registry.load(host), args.name)
    rows = [{"fingerprint": k.fingerprint, "role": k.role, "label": k.label,
             "type": k.key.split()[0], "added": k.added, "by": k.by,
             "last_used": access.last_used(host, k.fingerprint)} for k in site.keys]
    if args.json:
        print(json.dumps({"site": args.name, "keys": rows}, indent=2))
        return
    if not rows:
        print(f"site {args.name} has no tenant keys (add one: access {args.name} add KEYFILE)")
    for r in rows:
        print(f"{r['fingerprint']}  {r['role']:6}  {r['label'] or '-':20}  added "
              f"{(r['added'] or '?')[:10]}  last used {(r['last_used'] or 'never')[:16]}")


def run(host: Host, args: argparse.Namespace) -> None:
    if args.action != "add" and (args.label or args.role):
        raise UsageError("--label and --role go with add")
    {"add": add, "remove": remove, "list": listing}[args.action](host, args)


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("access", build_parser(), run, argv, host)
