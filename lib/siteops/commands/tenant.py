"""tenant: what a tenant key runs. sshd forces it on every login with such a
key (see `access --help`); it is not for running by hand.

It reads the command the tenant asked for (SSH_ORIGINAL_COMMAND), accepts it
only if it is one of the allowed forms below, every word checked, and only for
a site the registry gives this key with a role that allows it; then it runs
the suite's own command with an argv it built itself. Anything else is refused
in one line with nothing changed. Every use is appended to the action log.

  deploy NAME [--ref REF] [--dry-run]              role deploy
  rollback NAME [--to RELEASE] [--list] [--dry-run]
  config NAME [--show]
  config NAME set KEY[=VALUE]... [--no-restart]    values also from stdin
  config NAME unset KEY... [--no-restart]
  backup NAME
  maintenance NAME [on [--message TEXT] [--retry-after S] | off]
  git push deploy@HOST:NAME REF                    deploys the pushed commit
  logs NAME drain add URL [--ca -] [--plain]       the CA's PEM on stdin
  logs NAME drain remove URL
  logs NAME drain list [--json]
  logs NAME [PROCESS] [-n N] [-f]                  role read
  sites show NAME [--json]
  sites usage NAME [--json]
  backup --list NAME [--json]
  help
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import access, cli, git, journal, registry, validate
from ..errors import SiteopsError
from ..host import Host, PATH
from ..model import DEPLOY_ROLE, READ_ROLE, Key
from ..users import DEPLOY_USER, sudo_caller
from . import backup as backup_command
from . import config, deploy, logs, maintenance, rollback, sites
from .config import public_argv

MAX_COMMAND = 2000
MAX_LINES = 100000
PROCESS = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
ZERO = "0" * 40
# Git's limits for a push: objects checked as they arrive, at most this much.
MAX_PUSH = "1g"
HOOKS = Path(__file__).resolve().parents[1] / "hooks"


class Refused(SiteopsError):
    """A request a tenant key may not make: one line, nothing changed."""
    exit_code = 2


@dataclass(frozen=True)
class Allowed:
    """A command a tenant key may run: the suite's own command (its parser reads
    the tenant's words, its main runs them), the role it needs, and what a
    tenant may set beyond the site's name, by argparse dest."""
    main: Callable[[list[str]], int]
    parser: Callable[[], argparse.ArgumentParser]
    role: str
    options: frozenset[str] = frozenset()
    reads: frozenset[str] = frozenset()      # options that make it a read
    check: Callable[[argparse.Namespace], object] | None = None   # the values a tenant may give
    prefix: tuple[str, ...] = ()             # words of the command before NAME
    suffix: tuple[str, ...] = ()             # and the words after it it always has


@dataclass(frozen=True)
class Request:
    command: str            # deploy, sites show, git-receive-pack, help
    site: str | None
    argv: tuple[str, ...]   # the argv handed to the command's main
    role: str


def _ref(args: argparse.Namespace) -> None:
    """A branch, tag or commit, spelt with no character a shell would read."""
    if not REF.fullmatch(args.ref):
        raise Refused(f"invalid ref {args.ref!r}: letters, digits and ._/- only")


def _logs(args: argparse.Namespace) -> None:
    if args.process is not None and not PROCESS.fullmatch(args.process):
        raise Refused(f"invalid process name {args.process!r}")
    if not 0 <= args.lines <= MAX_LINES:
        raise Refused(f"invalid -n {args.lines}: a number from 0 to {MAX_LINES}")


def _drain(args: argparse.Namespace) -> None:
    """A tenant's CA comes on stdin: a path would have root read a file for it."""
    if args.ca not in (None, "-"):
        raise Refused("--ca takes '-' with a tenant key: the CA's PEM on standard input")


def _config(args: argparse.Namespace) -> None:
    if args.action is not None:
        config.requested(args)


def _sites(action: str) -> Allowed:
    return Allowed(sites.main, sites.build_parser, READ_ROLE, frozenset({"json"}),
                   prefix=(action,))


ALLOWED: dict[str, Allowed] = {
    "deploy": Allowed(deploy.main, deploy.build_parser, DEPLOY_ROLE,
                      frozenset({"ref", "dry_run"}), check=_ref),
    "rollback": Allowed(rollback.main, rollback.build_parser, DEPLOY_ROLE,
                        frozenset({"to", "list", "dry_run"})),
    "config": Allowed(config.main, config.build_parser, DEPLOY_ROLE,
                      frozenset({"action", "pairs", "show", "no_restart", "dry_run"}),
                      check=_config),
    "backup": Allowed(backup_command.main, backup_command.build_parser, DEPLOY_ROLE,
                      frozenset({"list", "json"}), reads=frozenset({"list"})),
    "logs": Allowed(logs.main, logs.build_parser, READ_ROLE,
                    frozenset({"process", "lines", "follow"}), check=_logs),
    "logs drain": Allowed(logs.main, logs.build_drain_parser, DEPLOY_ROLE,
                          frozenset({"action", "url", "ca", "plain", "json", "dry_run"}),
                          check=_drain, suffix=("drain",)),
    "maintenance": Allowed(maintenance.main, maintenance.build_parser, DEPLOY_ROLE,
                           frozenset({"state", "message", "retry_after", "dry_run"})),
    "sites show": _sites("show"),
    "sites usage": _sites("usage"),
}
HELP = __doc__.split("\n\n")[2]


def refuse_controls(command: str) -> None:
    if len(command) > MAX_COMMAND:
        raise Refused(f"command longer than {MAX_COMMAND} characters")
    bad = [c for c in command if ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xa0
           or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069]
    if bad:
        raise Refused("control characters in the command")


def push_target(path: str) -> str:
    """The site a git push names: NAME, /NAME, NAME.git or /NAME.git."""
    name = path[1:] if path.startswith("/") else path
    name = name[:-4] if name.endswith(".git") else name
    return validate.site_name(name)


def parse(command: str | None) -> Request:
    """The request a tenant's SSH command stands for, or Refused."""
    if command is None or not command.strip():
        return Request("help", None, (), READ_ROLE)
    refuse_controls(command)
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise Refused(f"cannot read the command: {exc}") from None
    if words == ["help"]:
        return Request("help", None, (), READ_ROLE)
    if words[0] == "git-receive-pack":
        if len(words) != 2:
            raise Refused("git-receive-pack takes one repository: the site's name")
        return Request("git-receive-pack", _site(push_target, words[1]), (), DEPLOY_ROLE)
    verb = words[0]
    if verb == "sites" and len(words) > 1:
        verb = f"sites {words[1]}"
    if verb == "logs" and words[2:3] == ["drain"]:
        verb = "logs drain"
    allowed = ALLOWED.get(verb)
    if allowed is None:
        raise Refused(f"{verb!r} is not a command a tenant key may run (ssh ... help lists them)")
    if "--" in words:
        raise Refused("'--' is not needed: a site's name never starts with '-'")
    argv = tuple(words[1:])
    args = _parsed(allowed, argv)
    names = [args.name] if hasattr(args, "name") else args.names
    if len(names) != 1:
        raise Refused(f"{verb} takes one site's name, not {len(names)}")
    site = names[0]
    plain = vars(_parsed(allowed, (*allowed.prefix, site, *allowed.suffix)))
    given = {dest for dest, value in vars(args).items() if plain.get(dest, MISSING) != value}
    refused = sorted(given - allowed.options - {"name", "names"})
    if refused:
        raise Refused(f"{verb} does not take {', '.join(_flag(d) for d in refused)} "
                      "with a tenant key")
    if allowed.check:
        try:
            allowed.check(args)
        except SiteopsError as exc:
            raise Refused(str(exc)) from None
    role = READ_ROLE if allowed.reads & given else allowed.role
    return Request(verb, site, argv, role)


MISSING = object()


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _parsed(allowed: Allowed, argv: tuple[str, ...]) -> argparse.Namespace:
    """The command's own parser on the tenant's words: one grammar, root's."""
    try:
        with cli.errors_raised():
            return allowed.parser().parse_args(list(argv))
    except SiteopsError as exc:
        raise Refused(str(exc)) from None


def _site(check: Callable[[str], str], word: str) -> str:
    if word.startswith("-"):
        raise Refused(f"{word!r} is not a site name")
    try:
        return check(word)
    except SiteopsError as exc:
        raise Refused(str(exc)) from None


def authorize(request: Request, sites: dict[str, Key]) -> Key | None:
    """The key's entry for the request's site, or Refused: the key must hold
    the site, and its role must allow the command."""
    if request.site is None:
        return None
    key = sites.get(request.site)
    if key is None:
        raise Refused(f"this key does not act on site {request.site!r} (it acts on "
                      f"{', '.join(sorted(sites)) or 'no site'})")
    if request.role == DEPLOY_ROLE and key.role != DEPLOY_ROLE:
        raise Refused(f"this key has the {key.role} role on {request.site}: "
                      f"{request.command} needs the deploy role")
    return key


def clean_environment(fingerprint: str, label: str) -> None:
    """Nothing of the tenant's environment reaches what runs for it: sshd
    passes LANG and LC_* (AcceptEnv), sudo keeps them."""
    keep = {k: os.environ[k] for k in ("SUDO_USER", "SUDO_UID", "SUDO_GID", "SSH_CONNECTION")
            if k in os.environ}
    os.environ.clear()
    os.environ.update(keep, PATH=PATH, LANG="C.UTF-8", HOME="/root",
                      SITEOPS_KEY=f"{label} {fingerprint}".strip())


def receive_pack(host: Host, site: str) -> int:
    """git receive-pack into the site's repository on the host (root-owned),
    with siteops's pre-receive hook, which deploys the pushed commit."""
    mirror = host.paths.mirror(site)
    env = {**git.env(host, site), "SITEOPS_SITE": site}
    if not (mirror / "HEAD").exists():
        host.ensure_dir(mirror.parent, 0o700)
        host.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", mirror], env=env)
    config = {"core.hooksPath": str(HOOKS), "receive.fsckObjects": "true",
              "receive.maxInputSize": MAX_PUSH, "receive.denyDeletes": "true",
              "receive.advertisePushOptions": "false", "receive.shallowUpdate": "false",
              "protocol.ext.allow": "never", "core.fsmonitor": "false"}
    argv = ["git", *[a for k, v in config.items() for a in ("-c", f"{k}={v}")],
            "receive-pack", str(mirror)]
    return subprocess.run(argv, env={**os.environ, **env}, check=False).returncode


def run_command(request: Request) -> int:
    return ALLOWED[request.command].main(list(request.argv))


def log(host: Host, fingerprint: str, label: str, request: Request | None, asked: str,
        result: str) -> None:
    shown = asked if request is None or request.command != "config" else \
        " ".join(["config", *public_argv(list(request.argv))])
    journal.record_action(host.paths, {
        "command": "tenant", "key": fingerprint, "label": label,
        "site": request.site if request else None, "argv": shown[:300], "result": result,
        "from": (os.environ.get("SSH_CONNECTION") or "").split(" ")[0]})


def build_parser() -> argparse.ArgumentParser:
    p = cli.Parser(prog="tenant", description=__doc__,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("fingerprint", help="the key sshd authenticated (its forced command says it)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    prog = "tenant"
    if argv in (["-h"], ["--help"]):
        build_parser().print_help()
        return 0
    if len(argv) != 1 or not access.FINGERPRINT.fullmatch(argv[0]) or os.geteuid() != 0 \
            or sudo_caller() not in (DEPLOY_USER, None):
        print(f"{prog}: the forced command of tenant keys (see access --help); "
              "not for running by hand", file=sys.stderr)
        return 2
    fingerprint = argv[0]
    asked = os.environ.get("SSH_ORIGINAL_COMMAND")
    host = Host()
    sites = access.sites_of(list(registry.load(host).sites.values()), fingerprint)
    label = next((k.label for k in sites.values() if k.label), "")
    clean_environment(fingerprint, label)
    request = None
    try:
        if not sites:
            raise Refused("this key acts on no site any more")
        request = parse(asked)
        authorize(request, sites)
    except Refused as exc:
        print(f"{prog}: refused: {exc}", file=sys.stderr)
        log(host, fingerprint, label, request, asked or "", f"refused: {exc}")
        return exc.exit_code
    access.mark_used(host, fingerprint)
    if request.command == "help":
        roles = ", ".join(f"{s} ({k.role})" for s, k in sorted(sites.items()))
        print(f"This key acts on: {roles}.\nCommands (ssh deploy@HOST COMMAND):\n{HELP}")
        log(host, fingerprint, label, request, asked or "", "ok")
        return 0
    assert request.site is not None
    try:
        code = receive_pack(host, request.site) if request.command == "git-receive-pack" \
            else run_command(request)
    except KeyboardInterrupt:
        code = 130
    log(host, fingerprint, label, request, asked or "", "ok" if code == 0 else f"exit {code}")
    return code


def pre_receive() -> int:
    """git's pre-receive hook for a push by a tenant key: one branch or tag,
    deployed; a failed deploy refuses the push (the ref is left as it was)."""
    site = validate.site_name(os.environ.get("SITEOPS_SITE", ""))
    updates = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
    if len(updates) != 1:
        print("siteops: push one branch or tag at a time (it is what gets deployed)")
        return 1
    old, new, ref = updates[0]
    if new == ZERO:
        print(f"siteops: {ref} cannot be deleted by a push")
        return 1
    if not ref.startswith(("refs/heads/", "refs/tags/")):
        print(f"siteops: only branches and tags are deployed, not {ref}")
        return 1
    branch = ref.split("/", 2)[2]
    print(f"siteops: deploying {branch} ({new[:12]}) to {site}", flush=True)
    return deploy.main([site, "--ref", new], pushed=branch)
