"""limits: show or change a site's resource limits (its systemd slice)."""

from __future__ import annotations

import argparse
import re

from .. import cli, instances, registry, systemd, units, validate
from ..ops import sites as sites_op
from ..model import Site
from ..host import Host

DESCRIPTION = f"""\
Show or change the resource limits of site NAME. They sit on the site's
slice (siteops-NAME.slice), so they hold for the whole site at once: its app
instances, its Redis and its builds. A site that reaches them is slowed or
has its own processes killed; the other sites and sshd keep running.

  --memory-max   memory of all its processes together (cgroup memory.max); at
                 the limit the kernel reclaims, then kills within the site only
  --tasks-max    processes and threads together: a fork bomb stops here
  --cpu-weight   its share of CPU when sites compete (1-10000; 100 is equal)
  --io-weight    its share of disk bandwidth when sites compete (1-10000)
  --sleep-after  stop every process of the site (web instances, workers,
                 Redis) after this long without a request, and start them on
                 the next one, which waits for them (90s, 15m, 2h, 1d), or
                 never (the default): see docs/sleeping.md

Defaults: memory {systemd.DEFAULT_LIMITS['memory_max']}, tasks \
{systemd.DEFAULT_LIMITS['tasks_max']}, CPU weight \
{systemd.DEFAULT_LIMITS['cpu_weight']}, IO weight {systemd.DEFAULT_LIMITS['io_weight']}.
Changes apply at once to the running site (the slice file is rewritten,
checked with `systemd-analyze verify`, and systemd reloaded): no restart.
Turning sleeping on or off moves the live release onto fresh instances
behind its doors (or out from behind them), as a deploy does.
"""

EPILOG = """\
examples:
  sudo limits shop                          show them, with the site's use now
  sudo limits shop --memory-max 512M --tasks-max 256
  sudo limits shop --cpu-weight 200         twice the CPU share of a default site
  sudo limits staging --sleep-after 15m     sleeps when idle, wakes on a request
"""

_SIZE = re.compile(r"[1-9][0-9]{0,5}[KMG]|infinity")


def size(value: str) -> str:
    """A memory size for MemoryMax=: 512M, 2G, ... or infinity."""
    if not _SIZE.fullmatch(value) or (value[-1] == "K" and int(value[:-1]) < 16384):
        raise validate.InvalidInput(f"invalid --memory-max {value!r}: a size like 512M or 2G "
                                    "(at least 16M), or infinity")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("limits", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site")
    p.add_argument("--memory-max", type=size, metavar="SIZE", help="e.g. 512M, 2G, infinity")
    p.add_argument("--tasks-max", type=validate.number("--tasks-max", 16, 100000), metavar="N")
    p.add_argument("--cpu-weight", type=validate.number("--cpu-weight", 1, 10000), metavar="N")
    p.add_argument("--io-weight", type=validate.number("--io-weight", 1, 10000), metavar="N")
    p.add_argument("--sleep-after", type=validate.sleep_after, default=argparse.SUPPRESS,
                   metavar="TIME", help="e.g. 15m, or never")
    return p


USAGE_PROPS = ("MemoryCurrent", "MemoryMax", "TasksCurrent", "TasksMax", "CPUWeight", "IOWeight")


def show(host: Host, site: Site) -> None:
    """The limits the registry holds and what the running slice reports."""
    now = systemd.show(host, units.slice_name(site.name), *USAGE_PROPS)
    for key, value in systemd.limits(site).items():
        host.say(f"{key:<12}{value}")
    host.say(f"{'sleep_after':<12}{validate.duration(site.sleep_after)}")
    host.say(f"in use now: memory {now.get('MemoryCurrent', '?')} bytes, "
             f"tasks {now.get('TasksCurrent', '?')} (slice reports MemoryMax="
             f"{now.get('MemoryMax', '?')}, TasksMax={now.get('TasksMax', '?')})")


def run(host: Host, args: argparse.Namespace) -> None:
    wanted = {k: v for k in systemd.DEFAULT_LIMITS if (v := getattr(args, k)) is not None}
    sleep = "sleep_after" in args
    if not wanted and not sleep:
        show(host, registry.get_site(registry.load(host), args.name))
        return
    if sleep:
        sites_op.set_sleep(host, args.name, args.sleep_after)
    if not wanted:
        return
    def change(entry: Site) -> None:  # a dry run saves nothing
        for key, value in wanted.items():
            setattr(entry.limits, key, value)
    with registry.site_locked(host, args.name, f"limits {args.name}"):
        site = registry.update_site(host, args.name, f"limits {args.name}", change)
        with host.step(f"limits of {args.name}: " + ", ".join(f"{k} {v}" for k, v in wanted.items())):
            changed = systemd.ensure_units(host, site)
    instances.refresh(host, site, changed)  # only if an older siteops left other unit files


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("limits", build_parser(), run, argv, host)
