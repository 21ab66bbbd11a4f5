"""audit's findings, and its checks of the host: pure functions from facts
(facts.gather) to findings; site_checks.py checks each site the same way.

Every finding has an id, a severity (ok, warning, critical), the host or
site it concerns, what is wrong and how to fix it; `fix` names what
`audit --fix` may repair by itself (None: a human must act)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from . import drains, nftables
from .facts import Facts
from .host import redact

OK, WARNING, CRITICAL = "ok", "warning", "critical"
RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
PUBLIC_TCP = {22, 80, 443}
PUBLIC_UDP = {68, 546}  # DHCP clients
LOOPBACK = {"127.0.0.1", "::1", "127.0.0.53", "127.0.0.54"}
MAX_EXPOSURE = 1.5
TLS_WARN_DAYS, TLS_CRIT_DAYS = 21, 7
DISK_WARN, DISK_CRIT = 80, 90
PG_CONN_WARN, PG_CONN_CRIT = 80, 95


@dataclass
class Finding:
    id: str
    severity: str
    subject: str
    message: str
    remedy: str = ""
    fix: str | None = None
    diff: str | None = None


def exit_code(findings: list[Finding]) -> int:
    """Nagios convention: 0 all ok, 1 a warning, 2 a critical finding."""
    return max((RANK[f.severity] for f in findings), default=0)


def as_json(f: Finding) -> dict:
    """Its fields that are set (all plain strings: no deep copy, as asdict's)."""
    return {k: v for k, v in vars(f).items() if v is not None}


def _f(id_, ok: bool, subject: str, good: str, bad: str, severity: str = CRITICAL,
       remedy: str = "", fix: str | None = None, diff: str | None = None) -> Finding:
    if ok:
        return Finding(id_, OK, subject, good)
    return Finding(id_, severity, subject, bad, remedy, fix, diff)


def drift(prefix: str, subject: str, expected: dict[str, str], actual: dict[str, str | None],
          secrets: list[str], remedy: str, fix: str) -> list[Finding]:
    """A finding PREFIX:PATH per generated file: as rendered, or missing or
    different (WARNING, with the diff, secrets masked)."""
    out = []
    for path, want in expected.items():
        have = actual.get(path)
        diff = None
        if have != want:
            lines = difflib.unified_diff((have or "").splitlines(True), want.splitlines(True),
                                         f"{path} (on disk)", f"{path} (rendered)")
            diff = redact("".join(lines), secrets)
        out.append(_f(f"{prefix}:{path}", have == want, subject, f"{path} as rendered",
                      f"{path} is missing" if have is None else f"{path} differs from the "
                      "registry's rendering (hand-edited?)", WARNING, remedy=remedy, fix=fix,
                      diff=diff))
    return out


# -- host ---------------------------------------------------------------------

def nginx_files_check(facts: Facts) -> Finding:
    """nginx's master may open every site's logs twice (a reload): below that,
    its reloads fail and it goes on serving its old configuration."""
    limit, needed = facts["nginx_files"]["limit"], facts["nginx_files"]["needed"]
    return _f("host.nginx.files", limit is None or limit >= (needed or 0), "host",
              f"nginx may open {limit} files (its reloads need some {needed})",
              f"nginx may open only {limit} files and a reload needs some {needed} (every "
              "site's logs, twice): its reloads fail ('Too many open files') and it keeps "
              "serving its old configuration",
              remedy="sudo bootstrap (LimitNOFILE in nginx's unit, given to the running master)")


def host_checks(facts: Facts) -> list[Finding]:
    h = "host"
    ufw = facts["ufw"]
    extra = sorted(set(ufw["allowed"]) - set(ufw["opened"]))
    ports = ", ".join(r.split("/")[0] for r in ufw["opened"])
    out = [
        _f("host.ufw", ufw["active"] and ufw["policy"] == "deny", h,
           "UFW active, incoming denied by default",
           f"UFW is {'active' if ufw['active'] else 'inactive'} with incoming policy "
           f"{ufw['policy']}", remedy="sudo bootstrap (or: ufw --force enable)"),
        _f("host.ufw.rules", not extra, h, f"UFW allows only {ports}",
           f"UFW also allows {', '.join(extra)}", WARNING,
           remedy="remove with `ufw delete allow RULE` unless you meant it"),
    ]
    f2b = facts["fail2ban"]
    missing = [j for j in ("sshd", "nginx-limit-req") if j not in f2b]
    out.append(_f("host.fail2ban", facts["units"]["fail2ban.service"]["active"] == "active"
                  and not missing, h, "fail2ban runs the sshd and nginx-limit-req jails",
                  "fail2ban is not running" if "Jail list" not in f2b
                  else f"fail2ban lacks jail(s) {', '.join(missing)}",
                  remedy="sudo bootstrap"))
    auto = facts["upgrades"]
    out.append(_f("host.upgrades", 'Unattended-Upgrade "1"' in auto
                  and 'Update-Package-Lists "1"' in auto, h,
                  "unattended-upgrades enabled daily", "unattended-upgrades is not enabled",
                  WARNING, remedy="sudo bootstrap"))
    sshd = facts["sshd"]
    bad = [f"{k} {sshd.get(k, '?')}" for k, want in (
        ("passwordauthentication", {"no"}), ("kbdinteractiveauthentication", {"no"}),
        ("pubkeyauthentication", {"yes"}),
        ("permitrootlogin", {"no", "prohibit-password", "without-password"}))
        if sshd.get(k) not in want]
    out.append(_f("host.sshd", not bad, h, "sshd is key-only",
                  f"sshd allows more than keys: {', '.join(bad)}", remedy="sudo bootstrap"))
    out.append(_f("host.nginx", facts["nginx_t"]["ok"], h, "nginx -t passes",
                  f"nginx -t fails: {' '.join(facts['nginx_t']['detail'])}",
                  remedy="fix the file nginx names, then `nginx -t`"))
    out.append(nginx_files_check(facts))
    out += listener_checks(facts)
    out.append(nftables_check(facts))
    out += drift("host.file", h, facts["host_files"]["expected"], facts["host_files"]["actual"],
                 [], "audit --fix renders the drain files again", "drains")
    out.append(sysctl_check(facts))
    out.append(hardening_check(facts))
    out += access_host_checks(facts["access"])
    out.append(backup_host_check(facts))
    out.append(outdated_check(facts))
    out += postgres_checks(facts)
    out.append(_f("host.certbot", facts["certbot_hook"] and
                  facts["units"]["certbot.timer"]["active"] == "active", h,
                  "certbot renewal timer active with the nginx reload hook",
                  "certbot renewal is not fully in place (timer "
                  f"{facts['units']['certbot.timer']['active']}, hook "
                  f"{'present' if facts['certbot_hook'] else 'missing'})", WARNING,
                  remedy="sudo bootstrap; systemctl enable --now certbot.timer"))
    if facts["log_host"]:
        down = sorted(d for d in facts["drains_failing"] if d.endswith(".fleet")
                      or d == "fleet.actions")
        out.append(_f("host.logs.upload", not down, h,
                      f"logs shipped to the fleet's log host {facts['log_host']}",
                      f"nothing delivered to the log host {facts['log_host']} for "
                      f"{drains.FAILING_AFTER // 60} min while records wait: "
                      + ", ".join(down), WARNING,
                      remedy=f"is {facts['log_host']} up and its rsyslog running? "
                             "journalctl -u rsyslog; hosts list"))
    used = facts["disk"]["used_pct"]
    out.append(_f("host.disk", used < DISK_WARN, h, f"disk {used}% used",
                  f"disk {used}% used", CRITICAL if used >= DISK_CRIT else WARNING,
                  remedy="free space: old releases (deploy --keep), logs, backups"))
    return out


def listener_checks(facts: Facts) -> list[Finding]:
    opened = {int(r.split("/")[0]) for r in facts["ufw"]["opened"] if r.endswith("/tcp")}
    public = [l for l in facts["listeners"] if l["addr"] not in LOOPBACK
              and not (l["proto"] == "tcp" and l["port"] in PUBLIC_TCP | opened)
              and not (l["proto"] == "udp" and l["port"] in PUBLIC_UDP)]
    out = [_f("host.listen.public", not public, "host",
              f"nothing but {', '.join(map(str, sorted(PUBLIC_TCP | opened)))} listens on a "
              "public address",
              "listening on a public address: " + ", ".join(
                  f"{l['proto']} {l['addr']}:{l['port']} ({', '.join(l['programs']) or '?'})"
                  for l in public),
              remedy="bind these services to 127.0.0.1 (UFW still blocks them)")]
    for name, program, port in (("postgres", "postgres", None), ("redis", "redis-server", None)):
        socks = [l for l in facts["listeners"] if program in l["programs"]]
        wide = [f"{l['addr']}:{l['port']}" for l in socks if l["addr"] not in LOOPBACK]
        out.append(_f(f"host.{name}.listen", not wide, "host",
                      f"{name} listens on loopback only",
                      f"{name} listens on {', '.join(wide)}", remedy="sudo bootstrap"))
    return out


def postgres_checks(facts: Facts) -> list[Finding]:
    pg = facts["postgres"]
    if "error" in pg:
        return [Finding("host.postgres", CRITICAL, "host",
                        f"cannot query PostgreSQL: {pg['error']}",
                        f"systemctl status {facts['postgres_unit']}")]
    loopback = {"127.0.0.1/32", "::1/128", "127.0.0.1", "::1"}
    catch_all = [r for r in pg["hba"] if r.get("error") or r["method"] == "trust"
                 or (r["type"] != "local" and "all" in (r["database"] or [])
                     and "all" in (r["user"] or []) and r["address"] not in loopback
                     and "samehost" != r["address"])]
    pct = round(100 * pg["connections"] / max(pg["max_connections"], 1))
    return [
        _f("host.postgres.hba", not catch_all, "host", "pg_hba.conf has no catch-all rule",
           "pg_hba.conf lets in more than each role's own database from loopback: line(s) "
           + ", ".join(str(r["line"]) for r in catch_all),
           remedy="remove those lines (sudo bootstrap restores siteops's file)"),
        _f("host.postgres.connections", pct < PG_CONN_WARN, "host",
           f"PostgreSQL connections {pg['connections']}/{pg['max_connections']}",
           f"PostgreSQL connections {pg['connections']}/{pg['max_connections']} ({pct}%)",
           CRITICAL if pct >= PG_CONN_CRIT else WARNING,
           remedy="find the site holding them: SELECT usename, count(*) FROM pg_stat_activity "
                  "GROUP BY 1"),
    ]


def nftables_check(facts: Facts) -> Finding:
    """The loopback port-ownership rules are loaded, and give every site's
    ports to its user's uid."""
    loaded = facts["nftables"]
    uids: dict[str, set[int]] = {}
    for name, uid, _, _ in nftables.owned(loaded or ""):
        uids.setdefault(name, set()).add(uid)
    missing = [n for n, s in facts["sites"].items()
               if n not in uids or (s["user"] is not None and s["user"]["uid"] not in uids[n])]
    return _f("host.nftables", loaded is not None and not missing, "host",
              "loopback port-ownership rules loaded for every site",
              "the nftables table inet siteops is not loaded" if loaded is None
              else f"the loaded port-ownership rules lack site(s) {', '.join(missing)}",
              remedy="audit --fix (or: systemctl restart siteops-nftables)", fix="nftables")


def sysctl_check(facts: Facts) -> Finding:
    """The running kernel settings match the baseline (where the kernel has them)."""
    sc = facts.get("sysctl")
    if sc is None:
        return Finding("host.sysctl", OK, "host", "kernel settings not checked in a container")
    drift = [f"{k} = {sc['have'][k]} (baseline {v})" for k, v in sc["want"].items()
             if sc["have"].get(k) is not None and sc["have"][k] != v]
    return _f("host.sysctl", not drift, "host", "kernel settings match the baseline",
              "kernel settings differ: " + ", ".join(drift), WARNING,
              remedy="sudo bootstrap (or: sysctl -p /etc/sysctl.d/90-siteops.conf)")


def hardening_check(facts: Facts) -> Finding:
    """The baseline files of hardening.py are as bootstrap wrote them, and the
    kernel has loaded siteops' audit rules."""
    hd = facts["hardening"]
    problems = [f"{p} differs" for p in hd["drift"]]
    if hd["unloaded_rules"]:
        problems.append("audit rules not loaded: " + ", ".join(hd["unloaded_rules"]))
    return _f("host.hardening", not problems, "host", "hardening baseline in place",
              "hardening baseline: " + "; ".join(problems), WARNING,
              remedy="sudo bootstrap (it rewrites the files and loads the audit rules)")


def access_host_checks(af: dict) -> list[Finding]:
    """The tenant keys file is what the registry says, and deploy's own
    authorized_keys holds no tenant key (unrestricted there) and no key
    bootstrap did not record."""
    h = "host"
    extra = [line for line in (af["file"] or "").splitlines()
             if line and not line.startswith("#") and line + "\n" not in af["expected"]]
    out = [_f("host.ssh.tenant_keys", af["file"] == af["expected"] or
              (af["file"] is None and not af["last_used"]), h,
              "tenant keys file matches the registry",
              ("tenant keys file has lines siteops did not write: "
               + "; ".join(redact(line[:120]) for line in extra)) if extra else
              "tenant keys file " + ("is missing" if af["file"] is None
                                     else "differs from the registry"),
              remedy="sudo audit --fix rewrites it from the registry (access NAME add "
                     "gives a key access)", fix="tenant_keys")]
    bad = af["tenant_in_operator"]
    unknown = af["unknown_operator"]
    out.append(_f("host.ssh.deploy_keys", not bad and not unknown, h,
                  "deploy's authorized_keys holds the operator keys bootstrap recorded",
                  (f"tenant key(s) {', '.join(bad)} also in deploy's own authorized_keys, "
                   "where nothing restricts them: full access") if bad else
                  f"deploy's authorized_keys has key(s) siteops did not write: "
                  f"{'; '.join(unknown)} (full access)",
                  CRITICAL if bad else WARNING,
                  remedy="remove the line(s) from ~deploy/.ssh/authorized_keys; if a key is "
                         "an operator's, run bootstrap to record the keys there"))
    return out


BACKUP_WARN_HOURS, BACKUP_CRIT_HOURS = 26, 48
VERIFY_WARN_DAYS = 8  # backup --verify runs weekly


def outdated_check(facts: Facts) -> Finding:
    """No service runs a program or library a security update replaced."""
    found = facts.get("outdated", {})
    shown = "; ".join(f"{u} ({', '.join(Path(f).name for f in files[:3])})"
                      for u, files in list(found.items())[:6])
    return _f("host.outdated", not found, "host", "no service runs replaced code",
              f"{len(found)} service(s) still run code an update replaced: {shown}", WARNING,
              remedy="sudo outdated --restart (sites switch with no failed request; "
                     "PostgreSQL is left for you to restart)")


def backup_host_check(facts: Facts) -> Finding:
    """The repository opens, and the daily backup and weekly verification timers run."""
    error = facts["backup"]["error"]
    if error:
        return Finding("host.backup", CRITICAL, "host",
                       f"the backup repository cannot be read: {error}",
                       "check /etc/siteops/backup.env and the repository; `backup --list`")
    stopped = [f"{timer} is {facts['units'][timer]['active']}"
               for timer in ("siteops-backup.timer", "siteops-verify.timer")
               if facts["units"][timer]["active"] != "active"]
    return _f("host.backup", not stopped, "host",
              "backup repository readable, daily backup and weekly verification timers active",
              "; ".join(stopped), WARNING,
              remedy="sudo bootstrap (or: systemctl enable --now siteops-backup.timer "
                     "siteops-verify.timer)")


