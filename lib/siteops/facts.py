"""Everything audit looks at, read once and in batches: one `ss`, one
`nginx -t`, one `systemctl show` for all units, one `systemd-analyze
security`, one psql query, one `du`, one restic listing; the commands that
wait (on restic, systemd, PostgreSQL, du) run side by side while files,
modes and owners are read directly. The result is plain JSON data, so
checks are pure functions that unit tests feed with recorded facts
(tests/unit/data/box-facts.json).

Shape of gather()'s result (as types mypy checks: Facts, SiteFacts and Stat
below; the checks in checks.py and site_checks.py take them):

    time          when the facts were read (2026-11-25T20:15:00Z)
    ufw           {active, policy, allowed: ["22/tcp", ...], opened: the rules
                  siteops opens (firewall.open_ports)}
    fail2ban      `fail2ban-client status` text
    sshd          `sshd -T` as {setting: value}
    nginx_t       {ok, detail: [last line]}
    nginx_files   {limit: the running master's soft limit of open files | null,
                  needed: what its reload needs for the registry's sites}
    upgrades      20auto-upgrades text
    certbot_hook  the renewal hook exists
    listeners     [{proto, addr, port, units: [unit], programs: [name]}]
    nftables      `nft list table inet siteops` text, or null if not loaded
    sysctl        {want: {key: value}, have: {key: value | null}}, or null in a
                  container (its /proc/sys is the host kernel's)
    hardening     {drift: [path], unloaded_rules: [audit rule key] | null (container)}
    backup        {error: why the restic repository cannot be read | null,
                   latest: {site: time of its newest snapshot},
                   verified: {site: {time, ok, snapshot, error}} (backup --verify)}
    outdated      {service: [replaced program or library it still runs]}
    units         {unit: {active, enabled}} (one systemctl show)
    exposure      {unit: systemd-analyze security score}
    postgres      {hba: [rule], connections, max_connections, databases: {db: PUBLIC can connect}}
    postgres_unit the cluster's unit
    disk          {used_pct}
    du            {site root: bytes}
    drains_failing {drain id: {waiting, since}}: drains that delivered nothing
                  for an hour while records waited (rsyslog's statistics)
    log_host      the fleet's log host this host ships to, or null
    host_files    {expected: {path: rendered text}, actual: {path: text | null}}:
                  the host's own drain and fleet files (drains.host_files)
    sites         {name: {user: {uid, gid, shell, home} | null,
                          tree: {path: STAT}, env: STAT | null,
                          current: STAT + {link, target_exists} | null, releases: [id],
                          expected: {path: rendered text}, actual: {path: text | null},
                          secrets: [str], tls: {not_after, disk_sha256, served_sha256,
                          served_error, renewal: certbot's renewal conf text | null
                          (only for sites siteops put on HTTPS)} | null,
                          urls: {DATABASE_URL | REDIS_URL: {have: the .env's URL,
                          password masked | null, want: the site's own service,
                          home: it points there, auth: that service takes its
                          password | null (not asked)}}}}
    STAT          {dir, mode, uid, gid} (lstat: a link is not followed)
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, NotRequired, TypedDict, cast
from urllib.parse import urlsplit

from . import (access, backup, distro, drains, envfile, firewall, fleetlogs, hardening, instances, journal, layout,
               logrotate, network, nftables, nginx, parts, php, postgres, redis, registry, sysctl,
               outdated, systemd, tls, units, usage, users, verify)
from . import safefs
from .errors import CommandError, SiteopsError
from .model import Site
from .host import Host, redact

HBA_AND_DATABASES = """\
SELECT json_build_object(
  'hba', (SELECT coalesce(json_agg(json_build_object('line', line_number, 'type', type,
          'database', database, 'user', user_name, 'address', address,
          'method', auth_method, 'error', error)), '[]') FROM pg_hba_file_rules),
  'connections', (SELECT count(*) FROM pg_stat_activity),
  'max_connections', current_setting('max_connections')::int,
  'databases', (SELECT json_object_agg(datname, has_database_privilege('public', oid, 'CONNECT'))
                FROM pg_database WHERE NOT datistemplate));
"""


class Stat(TypedDict):
    """lstat of a path (a link is not followed)."""
    mode: int
    uid: int
    gid: int
    dir: bool
    link: NotRequired[str]  # a symbolic link's target, with
    target_exists: NotRequired[bool]


class SiteFacts(TypedDict):
    """What audit reads of one site (see the module's docstring)."""
    user: dict[str, Any] | None
    tree: dict[str, Stat | None]
    env: Stat | None
    current: Stat | None
    releases: list[str]
    expected: dict[str, str]
    actual: dict[str, str | None]
    missing_parts: list[str]
    secrets: list[str]
    tls: dict[str, Any] | None
    jobs: dict[str, dict]
    urls: dict[str, dict]


class HostFiles(TypedDict):
    """The host's own generated files (drains.host_files), rendered and on disk."""
    expected: dict[str, str]
    actual: dict[str, str | None]


class Facts(TypedDict):
    """What audit reads of the host and its sites (see the module's docstring)."""
    time: str
    upgrades: str
    certbot_hook: bool
    listeners: list[dict[str, Any]]
    nftables: str | None
    sysctl: dict[str, Any] | None
    hardening: dict[str, Any]
    outdated: dict[str, list[str]]
    access: dict[str, Any]
    postgres_unit: str
    disk: dict[str, float]
    usage: dict[str, dict]
    sites: dict[str, SiteFacts]
    host_files: HostFiles
    drains_failing: dict[str, dict]
    log_host: str | None
    backup: dict[str, Any]
    exposure: dict[str, float]
    du: dict[str, int]
    units: dict[str, dict[str, Any]]
    postgres: dict[str, Any]
    nginx_t: dict[str, Any]
    nginx_files: dict[str, int | None]
    ufw: dict[str, Any]
    fail2ban: str
    sshd: dict[str, str]


def host_units(pg_unit: str) -> list[str]:
    return ["nginx.service", pg_unit, "fail2ban.service", "unattended-upgrades.service",
            "certbot.timer", "siteops-backup.timer", "siteops-verify.timer"]


def unit_states(host: Host, names: list[str]) -> dict[str, dict]:
    """Active state of many units (names) from the manager's list of loaded
    units (a unit not loaded is inactive); enabled means the
    multi-user.target.wants link that starts it at boot is there (read from
    disk: the manager's UnitFileState lags behind `enable --no-reload`)."""
    active = systemd.loaded(host)
    def wants(unit: str) -> Path:
        return host.paths.socket_wants if unit.endswith(".socket") else host.paths.boot_wants
    return {u: {"active": active.get(u, "inactive"),
                "enabled": "enabled" if (wants(u) / u).exists() else "not enabled"}
            for u in names}


def exposure(host: Host, names: list[str]) -> dict[str, float]:
    """`systemd-analyze security` exposure of each unit, from one call for
    the units whose files (or systemd-analyze itself) changed since the last
    audit; the others' from the cache it keeps (a score depends on nothing
    else, and scoring a thousand units takes seconds)."""
    if not names:
        return {}
    cache_path = host.paths.state / "exposure.json"
    try:
        cache = json.loads(host.read(cache_path) or "{}")
    except json.JSONDecodeError:
        cache = {}
    try:
        tool = host.paths.p("/usr/bin/systemd-analyze").stat()
        stamp: tuple | None = (tool.st_mtime_ns, tool.st_size)
    except OSError:
        stamp = None
    keys = {u: unit_key(host, u, stamp) for u in names}
    todo = [u for u in names if cache.get(u, {}).get("key") != keys[u]]
    scores = {u: cache[u]["score"] for u in names if u not in todo}
    if todo:
        out = host.query(["systemd-analyze", "security", "--no-pager", "--", *todo],
                         ok=range(256)).out
        scores.update({m.group(1): float(m.group(2)) for m in re.finditer(
            r"Overall exposure level for (\S+): ([\d.]+)", out)})
        fresh = {u: {"key": keys[u], "score": scores[u]} for u in names if u in scores}
        if fresh != cache and not host.dry_run and cache_path.parent.is_dir():
            safefs.write(cache_path, json.dumps(fresh).encode(), 0o600)
    return scores


def unit_key(host: Host, unit: str, tool: object) -> str:
    """What a unit's exposure score depends on: its file (an instance's
    template), its drop-ins, and the systemd-analyze that scores it (tool:
    its modification time and size)."""
    template = re.sub(r"@[^.]+\.", "@.", unit)
    digest = hashlib.sha256(repr((tool, unit)).encode())
    for name in dict.fromkeys((template, unit)):
        files = [host.paths.unit(name)]
        dropins = host.paths.unit(name + ".d")
        if dropins.is_dir():
            files += sorted(dropins.glob("*.conf"))
        for path in files:
            digest.update(f"{path}\0{host.read(path)}\0".encode())
    return digest.hexdigest()


def postgres_facts(host: Host) -> dict:
    try:
        return json.loads(postgres.psql(host, HBA_AND_DATABASES) or "{}")
    except (CommandError, json.JSONDecodeError) as exc:
        return {"error": str(exc)}


def stat(path: Path) -> Stat | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    out: Stat = {"mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid,
                           "dir": path.is_dir() and not path.is_symlink()}
    if path.is_symlink():
        out["link"] = os.readlink(path)
        out["target_exists"] = path.exists()
    return out


def tls_facts(host: Host, site: Site) -> dict | None:
    """The certificate on disk (expiry, fingerprint) and the one nginx serves."""
    certs = nginx.cert_dir(host, site)
    if certs is None:
        return None
    pem = (certs / "fullchain.pem").read_text()
    first = pem[:pem.index("-----END CERTIFICATE-----") + 25]
    facts: dict[str, Any] = {
        "disk_sha256": hashlib.sha256(ssl.PEM_cert_to_DER_cert(first)).hexdigest()}
    facts["not_after"] = tls.not_after(host, certs / "fullchain.pem")
    if site.tls:  # siteops issued it: certbot must be able to renew it
        facts["renewal"] = host.read(tls.renewal_conf(host, site))
    try:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", 443), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=site.domains[0]) as conn:
                facts["served_sha256"] = hashlib.sha256(conn.getpeercert(True) or b"").hexdigest()
    except (OSError, ssl.SSLError) as exc:
        facts["served_error"] = str(exc)
    return facts


DrainContext = tuple[fleetlogs.Shipping | None, str]  # where the host ships, its name


def drain_context(host: Host) -> DrainContext:
    return fleetlogs.load(host)[0], drains.hostname(host)


def expected_files(host: Host, site: Site, nginx_version: tuple[int, ...],
                   env_text: str | None, shipping: DrainContext | None = None) -> dict[str, str]:
    """Every file siteops generates for the site alone, as the registry
    renders it today (the host's drain files are host_files'); shipping: the
    drain_context, if at hand."""
    name = site.name
    files = {str(host.paths.unit(u)): text for u, text in systemd.render_units(host, site).items()}
    files[str(host.paths.nginx_site(name))] = nginx.site_config(
        site, nginx_version, nginx.cert_dir(host, site), host.paths.of(name))
    files[str(host.paths.logrotate(name))] = logrotate.config(host, site)
    if php.runs_fpm(site):
        files[str(host.paths.php_fpm_conf)] = php.conf_text()
    files.update({str(path): text for path, text in drains.site_files(
        host, site, *(shipping or drain_context(host))).items()})
    if env_text:
        files[str(host.paths.redis_conf(name))] = redis.site_conf(
            host, site, envfile.passwords(env_text)[1])
    files.update({str(path): text for path, text in instances.live_dropins(host, site).items()})
    try:
        files.update({str(host.paths.unit(u)): t for u, t in systemd.render_jobs(host, site).items()})
    except SiteopsError:
        pass  # its program gone from the live release: its runs fail (site.NAME.job)
    return files


class PasswordChecks:
    """Whether a role's SCRAM verifier was made from its .env's password,
    remembered between audits (one PBKDF2 of 4,096 rounds a site, 1.5 ms:
    the largest part of an audit of hundreds) under what the answer depends
    on: the verifier, hashed, and the .env by identity, size and times (its
    ctime moves on every write, and only root can set it). Nothing derived
    from a password is kept."""

    def __init__(self, host: Host):
        self.host, self.path = host, host.paths.state / "password-checks.json"
        try:
            self.known = json.loads(host.read(self.path) or "{}")
        except json.JSONDecodeError:
            self.known = {}
        self.fresh: dict[str, dict] = {}

    def matches(self, name: str, env: os.stat_result | None, verifier: str,
                password: str) -> bool:
        """postgres.verifier_matches, or what it said when nothing it depends
        on had changed (env: the .env's lstat, None when it moved while read)."""
        key = None if env is None else hashlib.sha256(
            f"{verifier}\0{env.st_dev}:{env.st_ino}:{env.st_size}:{env.st_mtime_ns}:"
            f"{env.st_ctime_ns}".encode()).hexdigest()
        known = self.known.get(name, {})
        if key is not None and known.get("key") == key:
            answer = bool(known["matches"])
        else:
            answer = postgres.verifier_matches(verifier, password)
        if key is not None:
            self.fresh[name] = {"key": key, "matches": answer}
        return answer

    def save(self) -> None:
        """Keep what this audit found (for the sites it looked at)."""
        known = {**self.known, **self.fresh}
        if known != self.known and not self.host.dry_run and self.path.parent.is_dir():
            safefs.write(self.path, json.dumps(known, sort_keys=True).encode(), 0o600)


def service_urls(site: Site, env_text: str | None, db_port: int,
                 db_auth: Callable[[str], bool] | None, redis_up: bool) -> dict[str, dict]:
    """Where the .env's DATABASE_URL and REDIS_URL point (passwords masked),
    whether that is the site's own service (want), and whether that service
    takes the password (auth: None when it cannot be asked). db_auth: whether
    the site's role takes a password (None: not known); redis_up: something
    listens on the site's Redis port (else nothing is asked: a sleeping
    site's Redis)."""
    values = envfile.parse(env_text or "")
    own = {"DATABASE_URL": f"{site.user}@localhost:{db_port}/{site.database}",
           "REDIS_URL": f"127.0.0.1:{site.ports['redis']}"}
    out = {}
    for key, want in own.items():
        url = values.get(key)
        entry = {"have": None if url is None else redact(url), "want": want,
                 "home": url is not None and envfile.points_home(key, url, site, db_port),
                 "auth": None}
        if url is not None:
            try:
                parts = urlsplit(url)
                user, password = parts.username, parts.password or ""
            except ValueError:
                user, password = None, ""
            if key == "REDIS_URL":
                if redis_up:
                    entry["auth"] = redis.accepts(site.ports["redis"], user or "default",
                                                  password)
            elif db_auth is not None:
                entry["auth"] = db_auth(password)
        out[key] = entry
    return out


def site_facts(host: Host, site: Site, nginx_version: tuple[int, ...], db_port: int,
               verifier: str | None, jobs: dict[str, dict[str, str]] | None = None,
               listening: set[int] | None = None,
               checks: PasswordChecks | None = None,
               shipping: DrainContext | None = None) -> SiteFacts:
    """jobs: the properties of its job units, if already read (gather reads
    every site's at once); listening: the ports something listens on, if
    known; checks: password checks remembered between audits; shipping: the
    drain_context, if at hand."""
    name = site.name
    env_path = host.paths.of(name).env
    env_stat = safefs.lstat(env_path)
    env_text = host.read(env_path)
    if env_stat is not None and safefs.lstat(env_path) != env_stat:
        env_stat = None  # changed while read: its answer is not remembered
    remembered = checks or PasswordChecks(host)
    db_auth = None if verifier is None else (
        lambda password: remembered.matches(name, env_stat, verifier, password))
    try:
        pw = pwd.getpwnam(name)
        user = {"uid": pw.pw_uid, "gid": pw.pw_gid, "shell": pw.pw_shell, "home": pw.pw_dir}
    except KeyError:
        user = None
    expected = expected_files(host, site, nginx_version, env_text, shipping)
    return {
        "user": user,
        "tree": {str(p): stat(p) for p, *_ in layout.tree(host, name)},
        "env": stat(env_path),
        "current": stat(host.paths.of(name).current),
        "releases": sorted(p.name for p in host.paths.of(name).releases.iterdir()
                           if p.is_dir()) if host.paths.of(name).releases.is_dir() else [],
        "expected": expected,
        "actual": {path: host.read(Path(path)) for path in expected},
        "missing_parts": [str(p) for p in parts.missing(host, site)],
        "secrets": envfile.secrets_of(env_text or ""),
        "tls": tls_facts(host, site),
        "jobs": systemd.job_results(host, site, jobs),
        "urls": service_urls(site, env_text, db_port, db_auth,
                             listening is None or site.ports["redis"] in listening),
    }


def ufw_facts(host: Host) -> dict:
    active, policy, allowed = firewall.status(host)
    return {"active": active, "policy": policy, "allowed": sorted(allowed),
            "opened": list(firewall.open_ports(host))}


def started(calls: dict[str, Callable[[], Any]]) -> Callable[[], dict[str, Any]]:
    """Start each call in a thread of its own and return what joins them: their
    results by name (the first exception raised again). For facts that wait on
    a command (restic, systemd-analyze, du, psql): they wait side by side while
    the rest is read. Daemon threads: a Ctrl-C does not wait for them, and
    their commands die with siteops."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(name: str, call: Callable[[], Any]) -> None:
        try:
            results[name] = call()
        except BaseException as exc:  # raised again in the caller's thread
            errors.append(exc)
    threads = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for thread in threads:
        thread.start()

    def joined() -> dict[str, Any]:
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results
    return joined


def gather(host: Host, sites: list[Site], every: list[Site] | None = None) -> Facts:
    """All facts for the host checks and for each of sites; every: the
    registry's sites, if the caller has them (read again if not)."""
    if every is None:
        every = list(registry.load(host).sites.values())
    cluster = postgres.clusters(host)
    ship, _ = fleetlogs.load(host)
    pg_unit = cluster[0].unit if cluster else "postgresql.service"
    db_port = cluster[0].port if cluster else 5432
    every_unit = host_units(pg_unit)
    site_units = {s.name: units.live_units(s) for s in sites}
    for names in site_units.values():
        every_unit += names

    def nginx_t() -> dict:
        res = host.query(["nginx", "-t"], ok=range(256))
        return {"ok": res.code == 0, "detail": (res.err or res.out).strip().splitlines()[-1:]}

    try:
        verifiers = postgres.verifiers(host, [s.user for s in sites])
    except (CommandError, json.JSONDecodeError):
        verifiers = {}  # PostgreSQL down: host.postgres says so
    waiting = started({
        "backup": lambda: {**backup.facts(host), "verified": verify.results(host)},
        "exposure": lambda: exposure(host, [u for names in site_units.values() for u in names
                                            if u.endswith(".service")]),
        "du": lambda: usage.du(host, [host.paths.site(s.name) for s in sites]),
        "units": lambda: unit_states(host, every_unit),
        "postgres": lambda: postgres_facts(host),
        "nginx_t": nginx_t,
        "ufw": lambda: ufw_facts(host),
        # Its `systemctl show` of the sleeping sites' instances waits while the
        # sites' files are read and rendered here.
        "usage": lambda: {r["name"]: r for r in usage.collect(host, sites, interval=0,
                                                               with_sizes=False)},
        "fail2ban": lambda: host.query(["fail2ban-client", "status"], ok=range(256)).out,
        "sshd": lambda: dict(line.split(" ", 1) for line in host.query(
            ["sshd", "-T"], ok=range(256)).out.splitlines() if " " in line),
    })
    deploy = users.lookup(host, users.DEPLOY_USER)
    root_stat = os.statvfs(host.paths.p("/"))
    version = distro.nginx_version(host)
    facts: dict[str, Any] = {
        "time": journal.now(),
        "upgrades": host.read(host.paths.auto_upgrades) or "",
        "certbot_hook": host.paths.certbot_hook.exists(),
        "listeners": network.listeners(host),
        "nftables": nftables.loaded(host),
        "sysctl": None if sysctl.in_container(host) else sysctl.facts(host),
        "hardening": hardening.facts(host),
        "outdated": outdated.scan(host.paths.p("/proc")),
        "access": access.facts(host, every, deploy.home if deploy else None),
        "nginx_files": {"limit": nginx.open_files_limit(host),
                        "needed": nginx.FILES_PER_SITE * len(every) + 64},
        "postgres_unit": pg_unit,
        "disk": {"used_pct": round(100 * (1 - root_stat.f_bavail / root_stat.f_blocks), 1)
                 if root_stat.f_blocks else 0},
        "log_host": ship.host if ship else None,
        "drains_failing": drains.failing(host) if ship or any(s.drains for s in sites) else {},
    }
    jobs = systemd.show_many(host, [u for s in sites for u in systemd.job_units(s)],
                             *systemd.JOB_PROPS)
    listening = {l["port"] for l in facts["listeners"]}
    checks = PasswordChecks(host)
    shipping = (ship, drains.hostname(host))
    wanted = {str(p): text for p, text in drains.host_files(host, every, *shipping).items()}
    facts["host_files"] = {"expected": wanted, "actual": {p: host.read(Path(p)) for p in wanted}}
    with safefs.walks_remembered():
        facts["sites"] = {s.name: site_facts(host, s, version, db_port, verifiers.get(s.user),
                                             jobs, listening, checks, shipping) for s in sites}
    checks.save()
    return cast(Facts, {**facts, **waiting()})
