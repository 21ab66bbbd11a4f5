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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import access, cli, git, journal, registry, validate
from ..errors import SiteopsError
from ..host import Host, PATH
from ..model import DEPLOY_ROLE, READ_ROLE, Key
from ..users import DEPLOY_USER, sudo_caller
from . import backup as backup_command
from . import config, deploy, logs, maintenance, rollback, sites
from .config import key, public_argv
from .maintenance import message as maintenance_message

MAX_COMMAND = 2000
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
class Grammar:
    """One allowed command: the role it needs, its flags and options (each
    option's value checked), what its words after NAME may be."""
    role: str
    flags: frozenset[str] = frozenset()
    options: dict[str, Callable[[str], object]] = field(default_factory=dict)
    words: Callable[[list[str]], None] | None = None   # None: no words after NAME
    read_flags: frozenset[str] = frozenset()           # flags that make it read-only


@dataclass(frozen=True)
class Request:
    command: str            # deploy, sites, git-receive-pack, help
    site: str | None
    argv: tuple[str, ...]   # the argv handed to the command's main
    role: str


def _config_words(words: list[str]) -> None:
    if not words:
        return
    action, pairs = words[0], words[1:]
    if action not in ("set", "unset") or not pairs:
        raise Refused("config takes: config NAME [set KEY[=VALUE]... | unset KEY...]")
    for pair in pairs:
        key(pair.partition("=")[0])


def _process(words: list[str]) -> None:
    if len(words) > 1 or (words and not PROCESS.fullmatch(words[0])):
        raise Refused(f"logs takes at most one process name, not {' '.join(words)!r}")


def _ref(value: str) -> str:
    """A branch, tag or commit, spelt with no character a shell would read."""
    if not REF.fullmatch(value):
        raise Refused(f"invalid ref {value!r}: letters, digits and ._/- only")
    return validate.git_ref(value)


def _on_off(words: list[str]) -> None:
    if words not in ([], ["on"], ["off"]):
        raise Refused("maintenance takes: maintenance NAME [on|off]")


def _lines(value: str) -> int:
    return validate.number("-n", 1, 100000)(value)


GRAMMARS: dict[str, Grammar] = {
    "deploy": Grammar(DEPLOY_ROLE, frozenset({"--dry-run"}), {"--ref": _ref}),
    "rollback": Grammar(DEPLOY_ROLE, frozenset({"--dry-run", "--list"}),
                        {"--to": validate.release_id}),
    "config": Grammar(DEPLOY_ROLE, frozenset({"--show", "--no-restart", "--dry-run"}),
                      words=_config_words),
    "backup": Grammar(DEPLOY_ROLE, frozenset({"--list", "--json"}), read_flags=frozenset({"--list"})),
    "logs": Grammar(READ_ROLE, frozenset({"-f", "--follow"}), {"-n": _lines, "--lines": _lines},
                    words=_process),
    "maintenance": Grammar(DEPLOY_ROLE, frozenset({"--dry-run"}),
                           {"--message": maintenance_message,
                            "--retry-after": validate.number("--retry-after", 1, 7 * 86400)},
                           words=_on_off),
    "sites show": Grammar(READ_ROLE, frozenset({"--json"})),
    "sites usage": Grammar(READ_ROLE, frozenset({"--json"})),
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
    rest = words[1:]
    if verb == "sites" and rest and rest[0] in ("show", "usage"):
        verb, rest = f"sites {rest[0]}", rest[1:]
    grammar = GRAMMARS.get(verb)
    if grammar is None:
        raise Refused(f"{verb!r} is not a command a tenant key may run (ssh ... help lists them)")
    flags: list[str] = []
    options: list[str] = []
    positional: list[str] = []
    it = iter(rest)
    for word in it:
        if word.startswith("-"):
            name, eq, given = word.partition("=")
            if name in grammar.flags and not eq:
                flags.append(name)
            elif name in grammar.options:
                value = given if eq else next(it, None)
                if value is None:
                    raise Refused(f"{name} needs a value")
                try:
                    grammar.options[name](value)
                except (SiteopsError, ValueError) as exc:
                    raise Refused(str(exc)) from None
                options += [name, value]
            else:
                raise Refused(f"{verb} does not take {name!r} with a tenant key")
        else:
            positional.append(word)
    if not positional:
        raise Refused(f"{verb} needs the site's name")
    site = _site(validate.site_name, positional[0])
    words_after = positional[1:]
    if words_after and grammar.words is None:
        raise Refused(f"{verb} takes only the site's name, not {' '.join(words_after)!r}")
    if grammar.words:
        try:
            grammar.words(words_after)
        except Refused:
            raise
        except SiteopsError as exc:
            raise Refused(str(exc)) from None
    role = READ_ROLE if grammar.read_flags & set(flags) else grammar.role
    if verb.startswith("sites "):
        argv = (verb.split()[1], site, *flags)
    else:
        argv = (site, *words_after, *flags, *options)
    return Request(verb.split()[0], site, argv, role)


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


# The commands a tenant key may run, by the name parse() gives them: each the
# suite's own command, with the argv parse() built (the same parser as root's).
MAINS: dict[str, Callable[[list[str]], int]] = {
    "deploy": deploy.main, "rollback": rollback.main, "config": config.main,
    "backup": backup_command.main, "logs": logs.main, "maintenance": maintenance.main,
    "sites": sites.main,
}


def run_command(request: Request) -> int:
    return MAINS[request.command](list(request.argv))


def log(host: Host, fingerprint: str, label: str, request: Request | None, asked: str,
        result: str) -> None:
    if not host.paths.log_dir.is_dir():
        return
    shown = asked if request is None or request.command != "config" else \
        " ".join(["config", *public_argv(list(request.argv))])
    journal.append(host.paths.log_dir / "actions.jsonl", {
        "time": journal.now(), "command": "tenant", "key": fingerprint, "label": label,
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
