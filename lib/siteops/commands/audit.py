"""audit: prove every site (and the host under them) still matches the architecture."""

from __future__ import annotations

import argparse
import json
import sys

from .. import checks, cli, fleet, validate
from ..host import Host
from ..ops import audit as audit_op

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
    c = audit_op.counts(findings)
    status = ["OK", "WARNING", "CRITICAL"][checks.exit_code(findings)]
    lines.append(f"audit {status}: {len(findings)} checks, {c['ok']} ok, {c['warning']} "
                 f"warning(s), {c['critical']} critical"
                 + (f"; fixed {len(fixed)}" if fixed else ""))
    return lines


def run(host: Host, args: argparse.Namespace) -> int:
    if args.json:
        host.out = sys.stderr  # progress of --fix must not mix with the document
    report = audit_op.audit(host, args.sites, fix=args.fix)
    if args.all_hosts:
        return fleet_report(host, report.doc, args)
    if args.json:
        print(json.dumps(report.doc, indent=2, sort_keys=True))
    else:
        for line in text_report(report.findings, report.fixed):
            host.say(line)
    return report.doc["exit_code"]


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
