"""sites: what the registry and the server say about each site."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import (cli, facts, fleet, journal, model, nginx, registry, releases, safefs, systemd,
                tls, usage, validate)
from .. import units
from ..model import Site
from ..host import Host

DESCRIPTION = """\
  sites list            one line per site: slot, ports, domains, components,
                        state, live release, TLS expiry, disk used
  sites show NAME       everything about one site, with its release history
  sites doc             the "Active sites registry" section of the architecture
                        document, as Markdown, generated from the registry and
                        the live server so it can never drift from it
  sites usage [NAME...] what each site uses: memory now, peak and limit, CPU
                        share over --interval, tasks, disk IO (the kernel's
                        accounting of its slice), its tree, database and Redis
                        memory, and its traffic over --window from its nginx
                        access log (requests, 4xx, 5xx, 429, p50/p99 upstream
                        time). --prometheus-dir DIR writes siteops.prom there
                        (atomically; node_exporter's textfile collector), as
                        the siteops-usage timer does every minute.

list, show and usage take --json. Read-only (usage keeps its du figures for
15 minutes in /var/lib/siteops/usage-disk.json).
"""


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("sites", DESCRIPTION, "examples:\n  sudo sites list\n"
                   "  sudo sites show shop --json\n  sudo sites doc > registry.md\n")
    # The common flags also after the action (`sites doc --dry-run`).
    common = cli.Parser(add_help=False)
    common.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                        help="read-only anyway; lets a non-root user try (as far as it can read)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show a traceback on unexpected errors")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, help_ in (("list", "one line per site"), ("show", "one site in detail")):
        sp = sub.add_parser(action, help=help_, parents=[common])
        if action == "show":
            sp.add_argument("name", type=validate.site_name)
        sp.add_argument("--json", action="store_true", help="print JSON")
        if action == "list":
            all_hosts(sp)
    sub.add_parser("doc", help="Markdown for the architecture document's registry section",
                   parents=[common])
    sp = sub.add_parser("usage", help="what each site uses", parents=[common])
    sp.add_argument("names", nargs="*", type=validate.site_name, metavar="NAME",
                    help="only these sites (default: all)")
    sp.add_argument("--json", action="store_true", help="print JSON")
    sp.add_argument("--interval", type=seconds, default=1.0, metavar="S",
                    help="seconds over which the CPU share is measured (default 1; 0: none)")
    sp.add_argument("--window", type=seconds, default=300.0, metavar="S",
                    help="seconds of access log the traffic figures cover (default 300)")
    sp.add_argument("--prometheus-dir", type=Path, metavar="DIR",
                    help="write siteops.prom into DIR (if DIR exists) instead of printing")
    all_hosts(sp)
    return p


def all_hosts(p: argparse.ArgumentParser) -> None:
    fleet.add_arguments(p, "list the sites of (a HOST column says which)", 60)


def fleet_rows(host: Host, rows: list[dict], command: list[str],
               timeout: int) -> tuple[list[dict], dict[str, str]]:
    """rows of this host and of every inventory host, each with its host's
    name; and the hosts that did not answer, with why."""
    docs, errors = fleet.gather(host, rows, command, timeout)
    return [dict(row, host=name) for name, doc in docs.items()
            for row in (doc if isinstance(doc, list) else [])], errors


def table(head: tuple[str, ...], cells: list[tuple[str, ...]], rows: list[dict]) -> list[str]:
    """Aligned columns; a HOST column first when the rows come from several hosts."""
    if any("host" in r for r in rows):
        head = ("HOST", *head)
        cells = [(r.get("host", fleet.LOCAL), *c) for r, c in zip(rows, cells)]
    grid = [head, *cells]
    widths = [max(len(row[i]) for row in grid) for i in range(len(head))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in grid]


def seconds(value: str) -> float:
    try:
        n = float(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 86400:
        raise validate.InvalidInput(f"invalid number of seconds {value!r}: 0 to 86400")
    return n


def tls_expiry(host: Host, site: Site) -> str | None:
    certs = nginx.cert_dir(host, site)
    end = tls.not_after(host, certs / "fullchain.pem") if certs else None
    return end[:10] if end else None


def summary(host: Host, site: Site, du: dict, states: dict) -> dict:
    """The facts about a site that list, show and doc print."""
    name = site.name
    live = releases.live_id(site)
    record = site.releases.get(live) if live else None
    return {
        "name": name, "slot": site.slot, "state": site.state,
        "domains": site.domains, "components": site.components,
        "ports": site.ports, "live_ports": units.live_ports(site),
        "uid": site.uid, "database": site.database,
        "repo": site.repo, "live_release": live, "commit": record and record.commit,
        "deployed": record and record.finished,
        "commands": (record and record.commands) or site.commands,
        "tls_expires": tls_expiry(host, site),
        "disk_bytes": du.get(str(host.paths.site(name))),
        "units": {u: states.get(u, {}).get("active", "?") for u in units.live_units(site)},
        "warm": site.warm and {"release": site.warm.release,
                               "units": units.warm_instances(site)},
        "workers": {kind: spec.count for kind, spec in (record.workers if record else {}).items()},
        "jobs": systemd.job_results(host, site),
        "sleep": usage.sleep_state(host, site),
    }


def gather(host: Host, sites: list[Site]) -> list[dict]:
    du = usage.du(host, [host.paths.site(s.name) for s in sites])
    names = [u for s in sites for u in units.live_units(s)]
    states = facts.unit_states(host, names) if names else {}
    return [summary(host, s, du, states) for s in sites]


def mib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def list_lines(rows: list[dict]) -> list[str]:
    head = ("NAME", "SLOT", "PORTS", "DOMAINS", "COMPONENTS", "STATE", "LIVE", "TLS", "DISK")
    return table(head, [(
        r["name"], str(r["slot"]),
        ",".join(str((r["live_ports"] or r["ports"]).get(c, "-")) for c in r["components"])
        + f",{r['ports']['redis']}",
        ",".join(r["domains"]), ",".join(r["components"]),
        (r["state"] or "?") + (f" ({r['sleep']['state']})" if r["sleep"] else ""),
        r["live_release"] or "-", r["tls_expires"] or "-", mib(r["disk_bytes"]))
        for r in rows], rows)


def show_lines(r: dict, site: Site) -> list[str]:
    lines = [f"{k + ':':<14}{v}" for k, v in (
        ("site", r["name"]), ("state", r["state"]), ("slot", r["slot"]),
        ("domains", " ".join(r["domains"])),
        ("ports", " ".join(f"{k} {v}" for k, v in r["ports"].items())),
        ("live ports", " ".join(f"{k} {v}" for k, v in (r["live_ports"] or {}).items()) or "-"),
        ("user", f"{r['name']} (UID {r['uid']})"), ("database", r["database"]),
        ("repository", r["repo"] or "-"),
        ("live release", f"{r['live_release']} {(r['commit'] or '')[:12]}" if r["live_release"] else "-"),
        ("units", " ".join(f"{u} {s}" for u, s in r["units"].items())),
        ("kept warm", f"{r['warm']['release']} on {' '.join(r['warm']['units'])} (deploy "
                      "--keep-warm: a rollback there needs no start)" if r["warm"] else "-"),
        ("workers", " ".join(f"{k} x{n}" for k, n in r["workers"].items()) or "-"),
        ("TLS expires", r["tls_expires"] or "no certificate"), ("disk", mib(r["disk_bytes"])),
        ("sleeps", sleep_line(r["sleep"])))]
    if r["jobs"]:
        lines.append("jobs:")
        lines += [f"  {job:<12} {j['schedule']:<20} last {j['last'] or 'never'}: "
                  f"{'running' if j['running'] else j['result'] or '-'}; next {j['next'] or '-'}"
                  for job, j in r["jobs"].items()]
    history = site.history[-10:]
    if history:
        lines.append("history:")
        lines += [f"  {e.at or ''}  {e.action:<8} {e.release}  {e.result}"
                  f"  {e.user or ''}  {e.extra.get('error', '')}".rstrip() for e in history]
    return lines


def sleep_line(s: dict | None) -> str:
    if s is None:
        return "never (always on)"
    return (f"after {validate.duration(s['sleep_after'])} without a request; {s['state']} since "
            f"{s['since'] or '?'}; last request {s['last_request'] or 'none'}; "
            f"{s['wakes_today']} wake(s) today")


def doc_lines(host: Host, rows: list[dict]) -> list[str]:
    """The reference's ACTIVE SITES REGISTRY section, generated."""
    today = journal.now()[:10]
    out = ["## ACTIVE SITES REGISTRY (generated)", "",
           f"> Generated by `sites doc` on {today} from /var/lib/siteops/registry.json and the "
           "live server. Do not edit: run it again.", ""]
    for i, r in enumerate(rows, 1):
        status = "ACTIVE" if r["live_release"] else "READY (not deployed)"
        out += [f"### Site #{i}: {r['name']}", "", f"**Status:** {status}  ",
                f"**Deployed:** {r['deployed'] or '-'}  ", f"**Release ID:** {r['live_release'] or '-'}", "",
                "#### Domains", *[f"- {d}" for d in r["domains"]], "",
                "#### Port allocation", "| Service | Port | Status |", "|---|---|---|"]
        live = r["live_ports"] or {}
        for c in r["components"]:
            unit = units.instance(r["name"], c, live[c]) if c in live else None
            out.append(f"| {c} | {live.get(c, r['ports'][c])} | "
                       f"{r['units'].get(unit, 'not deployed') if unit else 'reserved'} |")
        redis_unit = units.redis_unit(r["name"])
        out += [f"| redis | {r['ports']['redis']} | {r['units'].get(redis_unit, '?')} |", "",
                "#### System resources",
                f"- **Unix user:** `{r['name']}` (UID {r['uid']})",
                f"- **Home:** `{host.paths.site(r['name'])}`",
                f"- **Database:** `{r['database']}` (role `{r['name']}`)",
                "- **Services:** " + ", ".join(f"`{u}` ({s})" for u, s in r["units"].items()),
                f"- **Nginx config:** `{host.paths.nginx_site(r['name'])}`",
                f"- **Repository:** {r['repo'] or '-'} (commit `{(r['commit'] or '-')[:12]}`)",
                "- **Start commands:** " + ", ".join(f"{c}: `{cmd}`" for c, cmd in
                                                    (r["commands"] or {}).items()),
                f"- **Disk used:** {mib(r['disk_bytes'])}", ""]
    out += ["### Port allocation summary", "", "| Ports | Site |", "|---|---|"]
    for r in rows:
        blocks = ", ".join(f"{first}-{last}" for first, last in units.block_ranges(r["slot"]))
        out.append(f"| {blocks} | {r['name']} |")
    out += ["", "### Domain registry", "", "| Domain | Site | TLS expires |", "|---|---|---|"]
    out += [f"| {d} | {r['name']} | {r['tls_expires'] or 'no certificate'} |"
            for r in rows for d in r["domains"]]
    out += ["", "### Database registry", "", "| Database | Owner | Status |", "|---|---|---|"]
    out += [f"| `{r['database']}` | `{r['name']}` | PUBLIC revoked |" for r in rows]
    pg = facts.postgres_facts(host)
    used = usage.du(host, [host.paths.sites])
    out += ["", "### Shared resource usage", "", f"As of {today}:", "",
            "| Resource | Usage |", "|---|---|",
            f"| PostgreSQL connections | {pg.get('connections', '?')}/{pg.get('max_connections', '?')} |",
            f"| Disk used by sites | {mib(used.get(str(host.paths.sites)))} |",
            "", "### TLS renewal", "",
            "Automatic: certbot's systemd timer; the deploy hook "
            "`/etc/letsencrypt/renewal-hooks/deploy/siteops-reload-nginx` runs `nginx -t` and "
            "reloads nginx.", ""]
    return out


def usage_lines(rows: list[dict]) -> list[str]:
    def size(n):
        return mib(n) if n is not None else "-"

    def limit(r):
        top = r["memory_max_bytes"]
        return f"{size(r['memory_bytes'])} / {size(top) if top else 'no limit'}"
    head = ("NAME", "MEMORY / LIMIT", "PEAK", "CPU%", "TASKS", "IO R/W", "DISK", "DB", "REDIS",
            "REQ", "4xx", "5xx", "429", "p50/p99 ms")
    lines = table(head, [(
        r["name"], limit(r), size(r["memory_peak_bytes"]),
        "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}",
        f"{r['tasks'] if r['tasks'] is not None else '-'}/{r['limits']['tasks_max']}",
        f"{size(r['io_read_bytes'])}/{size(r['io_write_bytes'])}", size(r["disk_bytes"]),
        size(r["database_bytes"]), size(r["redis_memory_bytes"]), str(r["requests"]),
        str(r["status_4xx"]), str(r["status_5xx"]), str(r["status_429"]),
        "-" if r["upstream_p50_ms"] is None
        else f"{r['upstream_p50_ms']:.0f}/{r['upstream_p99_ms']:.0f}") for r in rows], rows)
    if rows:
        lines.append(f"traffic over the last {rows[0]['window_seconds']:g} s of each access log")
    return lines


def show_usage(host: Host, data, args: argparse.Namespace) -> dict[str, str]:
    names = args.names or sorted(data.sites, key=lambda n: data.sites[n].slot)
    sites = [registry.get_site(data, n) for n in names]
    rows = usage.collect(host, sites, 0 if args.prometheus_dir else args.interval, args.window)
    errors: dict[str, str] = {}
    if args.all_hosts:
        rows, errors = fleet_rows(host, rows, ["sites", "usage", *args.names, "--interval",
                                               f"{args.interval:g}", "--window",
                                               f"{args.window:g}"], args.host_timeout)
    if args.prometheus_dir:
        if args.prometheus_dir.is_dir() and not host.dry_run:
            safefs.write(args.prometheus_dir / "siteops.prom",
                         usage.prometheus(rows).encode(), 0o644)
        return errors
    if args.json:
        print(json.dumps(rows, indent=2))
        return errors
    for line in usage_lines(rows):
        host.say(line)
    return errors


def run(host: Host, args: argparse.Namespace) -> int:
    data = registry.load(host)
    if args.action == "usage":
        return unreachable(show_usage(host, data, args))
    if args.action == "show":
        site = registry.get_site(data, args.name)
        row = gather(host, [site])[0]
        if args.json:
            print(json.dumps(dict(row, history=model.to_json(site.history)), indent=2))
        else:
            for line in show_lines(row, site):
                host.say(line)
        return 0
    rows = gather(host, sorted(data.sites.values(), key=lambda s: s.slot))
    errors: dict[str, str] = {}
    if args.action == "list" and args.all_hosts:
        rows, errors = fleet_rows(host, rows, ["sites", "list"], args.host_timeout)
    if args.action == "list" and args.json:
        print(json.dumps(rows, indent=2))
        return unreachable(errors)
    lines = list_lines(rows) if args.action == "list" else doc_lines(host, rows)
    for line in lines:
        host.say(line)
    return unreachable(errors)


def unreachable(errors: dict[str, str]) -> int:
    """Each host that did not answer, on stderr; exit code 1 if any."""
    for why in errors.values():
        print(f"sites: {why}", file=sys.stderr)
    return 1 if errors else 0


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("sites", build_parser(), run, argv, host)
