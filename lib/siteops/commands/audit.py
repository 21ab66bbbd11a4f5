"""audit: prove every site (and the host under them) still matches the architecture."""

from __future__ import annotations

import argparse
import json
import socket
import sys

from .. import (access, checks, cli, fleet, envfile, facts, instances, journal, layout, logrotate, model,
                nftables, nginx, notify, postgres, redis, registry, releases, systemd, validate)
from .. import drains, php, site_checks, units
from ..ops import sites as sites_op
from ..errors import UsageError
from ..model import Site
from ..host import Host

DESCRIPTION = """\
Check the host and every site (or the SITEs named) against the architecture
and report each finding with an id, a severity, what is wrong and how to fix
it. Safe for cron and timers: read-only without --fix, no colour, no prompts.

Exit codes (Nagios): 0 all ok, 1 warnings, 2 critical, 3 the audit itself
could not run. Every run (not --dry-run) appends one JSON line to
/var/log/siteops/audit.jsonl (rotated weekly); bootstrap installs an hourly
timer for it. What changed since the last run goes to the alert channels
(notify).

Host: UFW, fail2ban jails, unattended-upgrades, effective sshd settings,
nginx -t, PostgreSQL and Redis on loopback only, pg_hba without catch-all,
certbot timer and reload hook, public listeners (only 22/80/443), disk,
PostgreSQL connections.

Each site: Unix user/UID/shell, owners and modes of its tree, .env 0600,
generated files equal to what the registry renders (diff when not), units
enabled and active, its processes on 127.0.0.1 and its own ports only,
`current` on the live release, release count, TLS days left and the
certificate nginx really serves, systemd-analyze exposure, database with
PUBLIC's CONNECT revoked, .env's DATABASE_URL and REDIS_URL leading to the
site's own database and Redis with the passwords those hold (never shown),
disk used.

--fix repairs what is safe: modes and owners, re-rendered files (nginx -t
first), stopped units, a dangling `current`, a DATABASE_URL or REDIS_URL
pointed elsewhere (pointed back, passwords kept; the app then moves to fresh
instances); it prints each change, then audits again. Everything else is left for a human.
"""

EPILOG = """\
examples:
  sudo audit                 everything, problems listed, one summary line
  sudo audit shop --json     one JSON document (findings, counts, exit code)
  sudo audit --fix
"""

UNKNOWN = 3


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("audit", DESCRIPTION, EPILOG)
    p.add_argument("sites", nargs="*", type=validate.site_name, metavar="SITE",
                   help="sites to check (default: all); the host is always checked")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument("--fix", action="store_true", help="repair what is safe, then audit again")
    fleet.add_arguments(p, "audit (one line each, one result for the fleet; an unreachable "
                           "host is CRITICAL)", 40)
    p.exit_code = UNKNOWN  # bad arguments are UNKNOWN to a monitor, not CRITICAL
    return p


def selected(data: registry.Registry, names: list[str]) -> list[Site]:
    sites = [s for s in data.sites.values() if s.state == model.READY]
    unknown = sorted(set(names) - set(data.sites))
    if unknown:
        raise UsageError(f"no site {unknown[0]!r} in the registry")
    return [s for s in sites if not names or s.name in names]


def run_checks(host: Host, sites: list[Site], every: list[Site] | None = None
               ) -> tuple[list[checks.Finding], str]:
    """The findings, and the time their facts were read (what day counts are
    from); every: the registry's sites, if at hand."""
    f = facts.gather(host, sites, every)
    findings = checks.host_checks(f)
    for site in sites:
        findings += site_checks.site_checks(host, site, f)
    return findings, f["time"]


def repair(host: Host, site: Site, kinds: set[str]) -> None:
    """Apply the safe repairs of kinds ('tree', 'env', 'urls', 'render', 'unit',
    'current')."""
    name = site.name
    if "tree" in kinds:
        layout.ensure_tree(host, name)
    env_path = host.paths.of(name).env
    env_text = host.read(env_path)
    if "env" in kinds and env_text is not None:
        with host.step(f"{env_path} 0600 {name}:{name}"):
            host.write(env_path, env_text, 0o600, name, name)
    restart = False
    if "urls" in kinds and env_text is not None:
        # The .env leads to the site's own services, and they take its passwords;
        # the app then moves to fresh instances that read it.
        with host.step(f"{env_path}: DATABASE_URL and REDIS_URL lead to {name}'s own services"):
            bound = envfile.bind(env_text, site, postgres.clusters(host)[0].port)
            restart = host.write(env_path, bound, 0o600, name, name)
            env_text = bound
        postgres.ensure_site_database(host, name, envfile.passwords(env_text)[0])
        kinds = kinds | {"render"}
    if "render" in kinds:
        redis_changed = False
        if env_text is not None:
            with host.step(f"redis config {name}"):
                redis_changed = redis.ensure_site_conf(host, site, envfile.passwords(env_text)[1])
        with host.step(f"systemd units of {name}"):
            changed = systemd.ensure_units(host, site, redis_config_changed=redis_changed)
        nginx.ensure_site(host, site)
        logrotate.ensure_site(host, site)
        systemd.ensure_jobs(host, site)
        if php.runs_fpm(site):
            php.ensure_conf(host, php.version(host) or "")
        drains.ensure(host, list(registry.load(host).sites.values()))
        site = instances.refresh(host, site, changed,
                                 force=restart or not instances.dropins_match(host, site))
    if "unit" in kinds:
        sites_op.ensure_running(host, site)
        failed = [u for u in units.live_units(site) if systemd.show(
            host, u, "ActiveState").get("ActiveState") == "failed"]
        if failed:  # a sleeping site's door or instance: the next request tries again
            with host.step(f"failure of {', '.join(failed)} cleared"):
                host.run(["systemctl", "reset-failed", *failed])
    live_id = releases.live_id(site)
    if "current" in kinds and live_id and host.paths.of(name).release(live_id).is_dir():
        with host.step(f"current -> releases/{live_id}"):
            host.symlink(host.paths.of(name).current, f"releases/{live_id}")


def counts(findings: list[checks.Finding]) -> dict[str, int]:
    return {sev: sum(1 for f in findings if f.severity == sev)
            for sev in (checks.OK, checks.WARNING, checks.CRITICAL)}


def text_report(findings: list[checks.Finding], fixed: list[str]) -> list[str]:
    lines = []
    for f in sorted(findings, key=lambda f: (-checks.RANK[f.severity], f.id)):
        if f.severity == checks.OK:
            continue
        lines.append(f"{f.severity.upper():<9}{f.id}: {f.message}")
        if f.remedy:
            lines.append(f"{'':9}fix: {f.remedy}")
        if f.diff:
            lines += [f"{'':9}{line}" for line in f.diff.rstrip("\n").splitlines()]
    c = counts(findings)
    status = ["OK", "WARNING", "CRITICAL"][checks.exit_code(findings)]
    lines.append(f"audit {status}: {len(findings)} checks, {c['ok']} ok, {c['warning']} "
                 f"warning(s), {c['critical']} critical"
                 + (f"; fixed {len(fixed)}" if fixed else ""))
    return lines


def document(findings: list[checks.Finding], fixed: list[str], sites: list[Site],
             time: str) -> dict:
    code = checks.exit_code(findings)
    return {"version": 1, "time": time, "host": socket.gethostname(),
            "status": ["ok", "warning", "critical"][code], "exit_code": code,
            "counts": counts(findings), "sites": [s.name for s in sites],
            "fixed": fixed, "findings": [checks.as_json(f) for f in findings]}


def append_log(host: Host, doc: dict) -> None:
    """One line per run in audit.jsonl: status, counts and the problems (no diffs)."""
    if host.dry_run or not host.paths.log_dir.is_dir():
        return
    line = dict(doc, findings=[{k: v for k, v in f.items() if k != "diff"}
                               for f in doc["findings"] if f["severity"] != checks.OK])
    journal.append(host.paths.log_dir / "audit.jsonl", line)


def run(host: Host, args: argparse.Namespace) -> int:
    if args.json:
        host.out = sys.stderr  # progress of --fix must not mix with the document
    data = registry.load(host)
    sites = selected(data, args.sites)
    findings, time = run_checks(host, sites, list(data.sites.values()))
    fixed: list[str] = []
    if args.fix:
        broken = [f for f in findings if f.severity != checks.OK and f.fix]
        if any(f.fix == "nftables" for f in broken):
            with host.step("loopback port-ownership rules (nftables)"):
                nftables.ensure(host, list(registry.load(host).sites.values()))
        if any(f.fix == "tenant_keys" for f in broken):
            with host.step("tenant keys file (from the registry)"):
                access.write(host, list(registry.load(host).sites.values()))
        for site in sites:
            kinds = {f.fix for f in broken if f.subject == site.name and f.fix}
            if kinds:
                repair(host, site, kinds)
        if broken and not host.dry_run:
            sites = selected(registry.load(host), args.sites)  # a repair may move instances
            findings, time = run_checks(host, sites)
            still = {f.id for f in findings if f.severity != checks.OK}
            fixed = sorted({f.id for f in broken} - still)
    doc = document(findings, fixed, sites, time)
    append_log(host, doc)
    notify.audit_events(host, findings, time)
    if args.all_hosts:
        return fleet_report(host, doc, args)
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        for line in text_report(findings, fixed):
            host.say(line)
    return doc["exit_code"]


def fleet_report(host: Host, doc: dict, args: argparse.Namespace) -> int:
    """This host's audit and every inventory host's, one line each; the
    fleet's result is the worst, an unreachable host counting as CRITICAL."""
    docs, errors = fleet.gather(host, doc, ["audit", *(["--fix"] if args.fix else [])],
                                args.host_timeout)
    code = max([d["exit_code"] for d in docs.values() if isinstance(d, dict)]
               + [checks.RANK[checks.CRITICAL]] * bool(errors))
    status = ["ok", "warning", "critical", "unknown"][code]
    if args.json:
        print(json.dumps({"version": 1, "status": status, "exit_code": code, "hosts": docs,
                          "unreachable": errors}, indent=2, sort_keys=True))
        return code
    for name, d in docs.items():
        assert isinstance(d, dict)
        worst = [f for f in d["findings"] if f["severity"] == d["status"] != checks.OK][:1]
        host.say(f"{name:16} {d['status'].upper():9} {d['counts']['warning']} warning(s), "
                 f"{d['counts']['critical']} critical" +
                 (f"; e.g. {worst[0]['id']}: {worst[0]['message'][:100]}" if worst else ""))
    for name, why in errors.items():
        host.say(f"{name:16} CRITICAL  {why}")
    host.say(f"fleet {status.upper()}: {len(docs) + len(errors)} host(s), "
             f"{len(errors)} unreachable")
    return code


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("audit", build_parser(), run, argv, host, error_code=UNKNOWN)
