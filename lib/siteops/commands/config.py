"""config: list, set and unset a site's settings (shared/.env)."""

from __future__ import annotations

import argparse
import sys

from .. import cli, envfile, instances, registry, safefs, systemd, units, validate
from ..errors import UsageError
from ..model import Site
from ..host import Host

DESCRIPTION = """\
List, set or unset the settings of site NAME: its shared/.env, which every
web process, worker, job and build reads.

  config NAME                     the keys, values masked (--show: values too)
  config NAME set KEY=VALUE ...   set keys; a value may hold any character
  config NAME set KEY             read KEY's value from standard input (so a
                                  secret stays out of the process list and
                                  shell history; one trailing newline dropped)
  config NAME unset KEY ...

A change is written atomically (0600, the site's user) and applied like a
deploy: the live release moves to fresh instances and workers, health-gated,
so no request fails; jobs read it at their next run. --no-restart only
writes it (applied by the next deploy, or by config set without it: a
setting is applied whenever a live instance is older than .env).

Values are written the way systemd reads EnvironmentFile= (plain, in single
quotes, or in double quotes with \\ " ` $ escaped) so the app gets exactly
the characters given. Refused: keys that are not NAME_LIKE_THIS, PORT,
FRONTEND_PORT and API_PORT (set per instance), and DATABASE_URL and REDIS_URL,
whose passwords siteops keeps in step with PostgreSQL and Redis.
"""

EPILOG = """\
examples:
  sudo config shop
  sudo config shop set MAIL_FROM=shop@example.com 'GREETING=it'"'"'s $5'
  printf %s "$STRIPE_KEY" | sudo config shop set STRIPE_KEY
  sudo config shop unset MAIL_FROM --no-restart
"""

MANAGED = ("DATABASE_URL", "REDIS_URL")
STDIN = object()  # a key whose value comes from standard input


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("config", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("action", nargs="?", choices=("set", "unset"), help="set or unset keys")
    p.add_argument("pairs", nargs="*", metavar="KEY[=VALUE]", help="what to set or unset")
    p.add_argument("--show", action="store_true", help="print values, not masks")
    p.add_argument("--no-restart", action="store_true",
                   help="write .env without moving the live release to fresh instances")
    return p


def key(value: str) -> str:
    if not envfile.KEY.fullmatch(value):
        raise UsageError(f"invalid key {value!r}: letters, digits and '_', not starting "
                         "with a digit")
    if value in envfile.MOVED_TO_UNIT:
        raise UsageError(f"{value} is set per instance by siteops; it cannot be configured")
    if value in MANAGED:
        raise UsageError(f"{value} is managed by siteops (its password is kept in step with "
                         "the service); change it with add-site, not config")
    return value


def requested(args: argparse.Namespace) -> dict:
    """{key: value, None to unset, or STDIN} as the command line asks, checked
    (no value read yet)."""
    if not args.pairs:
        raise UsageError(f"{args.action} needs at least one KEY")
    out: dict = {}
    for pair in args.pairs:
        k, sep, v = pair.partition("=")
        if args.action == "unset":
            if sep:
                raise UsageError(f"unset takes keys, not {pair!r}")
            out[key(k)] = None
        else:
            out[key(k)] = v if sep else STDIN
    if sum(v is STDIN for v in out.values()) > 1:
        raise UsageError("only one KEY may take its value from standard input")
    return out


def changes(args: argparse.Namespace, stdin=None) -> dict[str, str | None]:
    """{key: value or None to unset} from the command line (and stdin)."""
    out = requested(args)
    for k, v in out.items():
        if v is STDIN:
            if stdin is None and sys.stdin.isatty():
                raise UsageError(f"{k} without '=' reads its value from standard input: pipe "
                                 f"it in (printf %s \"$VALUE\" | config ... set {k})")
            data = (stdin or sys.stdin.buffer).read()
            if not data:
                raise UsageError(f"no value for {k} on standard input (for an empty value: "
                                 f"set {k}=)")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"the value of {k} on standard input is not UTF-8") from None
            out[k] = text[:-1] if text.endswith("\n") else text
        if out[k] is not None:
            check_value(k, out[k])
    return out


def check_value(k: str, v: str) -> None:
    if "\0" in v:
        raise UsageError(f"the value of {k} holds a NUL character, which no environment can")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"the value of {k} is not valid UTF-8 (systemd would drop it)") from None


def mask(value: str) -> str:
    return "********" if value else "(empty)"


def listing(text: str, show: bool) -> list[str]:
    values = envfile.parse(text)
    return [f"{k}={envfile.quote(v) if show else mask(v)}" for k, v in values.items()]


def public_argv(argv: list[str]) -> list[str]:
    """argv for the action log: values replaced by a mask."""
    return [a.split("=", 1)[0] + "=********" if "=" in a and not a.startswith("-") else a
            for a in argv]


def run(host: Host, args: argparse.Namespace) -> None:
    name = args.name
    env_path = host.paths.of(name).env
    if args.action is None:
        registry.get_site(registry.load(host), name)
        for line in listing(host.read(env_path) or "", args.show):
            host.say(line)
        return
    wanted = changes(args)
    with registry.site_locked(host, name, f"config {name}") as site:
        text = host.read(env_path)
        if text is None:
            raise UsageError(f"site {name} has no {env_path}: run add-site {name} first")
        new = envfile.assign(text, wanted)
        with host.step(f"{env_path}: {args.action} {', '.join(wanted)}"):
            changed = host.write(env_path, new, 0o600, site.user, site.user)
        if not args.no_restart and (changed or outdated(host, site)):
            apply(host, site)
        elif changed:
            host.say(f"note: not applied yet; the next deploy (or config {name} set without "
                     "--no-restart) starts the app with it")


def outdated(host: Host, site: Site) -> bool:
    """True if a live instance started before .env last changed: it runs with
    older settings (a config killed between its write and its restart, or an
    earlier --no-restart), so setting the same value again applies it."""
    st = safefs.lstat(host.paths.of(site.name).env)
    if st is None:
        return False
    for unit in units.live_instances(site):
        props = systemd.show(host, unit, "ActiveState", "ExecMainStartTimestamp",
                             unix_times=True)
        out = props.get("ExecMainStartTimestamp", "")
        if props.get("ActiveState") == "active" and out.startswith("@") \
                and float(out[1:]) < st.st_mtime:
            return True
    return False


def asleep(host: Host, site: Site) -> bool:
    """True if the site sleeps now: no live web instance runs (its next
    wake starts them afresh, reading .env)."""
    return bool(site.live and site.live.doors) and not any(
        systemd.is_active(host, u) for u in units.live_web(site))


def apply(host: Host, site: Site) -> None:
    """The live release, with its workers, onto fresh instances that read the
    new .env (the switch deploy uses); nothing before the first deploy."""
    if not site.live:
        host.say(f"site {site.name} has no live release yet: its first deploy reads the settings")
        return
    if asleep(host, site):
        host.say(f"site {site.name} sleeps: its next wake reads the settings")
        return
    instances.restart(host, site, "settings changed")


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("config", build_parser(), run, argv, host, public_argv=public_argv)
