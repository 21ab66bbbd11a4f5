"""The audit: facts read, checks run, safe repairs made (--fix) and the
result recorded (audit.jsonl, alert channels). The audit command prints it;
the fleet's views gather it from every host."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from .. import (access, checks, drains, envfile, facts, instances, journal, layout, logrotate,
                model, nftables, nginx, notify, php, postgres, redis, registry, releases,
                site_checks, systemd, units)
from ..errors import UsageError
from ..host import Host
from ..model import Site
from . import sites as sites_op


@dataclass
class Report:
    findings: list[checks.Finding]
    fixed: list[str]  # ids of findings --fix repaired
    doc: dict  # document(): what --json prints and audit.jsonl records


def audit(host: Host, names: list[str], fix: bool = False) -> Report:
    """Check the host and the sites named (all if none); with fix, repair
    what is safe and check again. Recorded in audit.jsonl, and what changed
    since the last audit goes to the alert channels."""
    data = registry.load(host)
    sites = selected(data, names)
    findings, time = run_checks(host, sites, list(data.sites.values()))
    fixed: list[str] = []
    if fix:
        broken = [f for f in findings if f.severity != checks.OK and f.fix]
        repair_all(host, sites, broken)
        if broken and not host.dry_run:
            sites = selected(registry.load(host), names)  # a repair may move instances
            findings, time = run_checks(host, sites)
            still = {f.id for f in findings if f.severity != checks.OK}
            fixed = sorted({f.id for f in broken} - still)
    doc = document(findings, fixed, sites, time)
    append_log(host, doc)
    notify.audit_events(host, findings, time)
    return Report(findings, fixed, doc)


def repair_all(host: Host, sites: list[Site], broken: list[checks.Finding]) -> None:
    """The safe repairs the broken findings name: the host's, then each site's."""
    fixes = {f.fix for f in broken}
    if fixes & {"nftables", "drains", "tenant_keys"}:  # rendered from every site
        every = list(registry.load(host).sites.values())
        if "nftables" in fixes:
            with host.step("loopback port-ownership rules (nftables)"):
                nftables.ensure(host, every)
        if "drains" in fixes:
            drains.ensure(host, every)
        if "tenant_keys" in fixes:
            with host.step("tenant keys file (from the registry)"):
                access.write(host, every)
    for site in sites:
        kinds = {f.fix for f in broken if f.subject == site.name and f.fix}
        if kinds:
            repair(host, site, kinds)


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
