"""The deploy operation: build a commit of a site's repository into a new
release and switch to it without dropping a request (commands/deploy.py
describes the steps; restore and a tenant's git push call it too)."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Sequence

from .. import git, instances, manifest, model, php, registry, releases, systemd, units, users
from ..errors import CommandError, SiteopsError, UsageError
from ..journal import now, who
from ..model import Release, Site
from ..host import Host

MIN_FREE_MB = 500


def health_overrides(values: list[str], components: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        c, sep, path = value.partition("=")
        if not sep or c not in components or not manifest.HEALTH_PATH.fullmatch(path):
            raise UsageError(f"invalid --health {value!r}: expected COMPONENT=/path for one of "
                             f"{', '.join(components)}")
        out[c] = path
    return out


def preflight(host: Host, site: Site, min_free_mb: int) -> None:
    if site.state != model.READY:
        raise SiteopsError(f"site {site.name} is not ready (state {site.state!r}): "
                           f"run add-site {site.name} ... again to finish it")
    st = os.statvfs(host.paths.site(site.name))
    free_mb = st.f_bavail * st.f_frsize // 2**20
    if free_mb < min_free_mb:
        raise SiteopsError(f"only {free_mb} MB free on {host.paths.site(site.name)}; "
                           f"need {min_free_mb} MB (--min-free-mb)")


def have(host: Host, program: str) -> bool:
    return host.query(["which", program], ok=range(256)).code == 0


def check_runtime(host: Host, runtime: str) -> None:
    need = {"node": ["node"], "python": ["python3"], "static": ["python3"]}.get(runtime, [])
    missing = [p for p in need if not have(host, p)]
    if runtime == "node" and not (have(host, "pnpm") or have(host, "npm")):
        missing.append("pnpm or npm")
    if missing:
        raise SiteopsError(f"the {runtime} runtime needs {', '.join(missing)}, which is not "
                           "installed: run bootstrap")


def link_shared(host: Host, name: str, rel) -> None:
    with host.step("link shared/.env, uploads, logs into the release"):
        for item in (".env", "uploads", "logs"):
            link = rel / item
            if link.exists() or link.is_symlink():
                host.run(users.as_user(name, "rm", "-rf", "--one-file-system", "--", link))
            host.run(users.as_user(name, "ln", "-s", f"../../shared/{item}", link))


def build(host: Host, site: Site, rid: str, record: Release, starts: dict[str, str],
          health_paths: dict[str, str]) -> None:
    """Export, link and build release rid of record.commit; record what it runs
    (starts: the --start overrides; health_paths: the --health ones, parsed)."""
    commit = record.commit
    assert commit is not None  # resolved before the release was recorded
    name = site.name
    rel = host.paths.of(name).release(rid)
    m = manifest.load(git.show(host, name, commit, manifest.FILE),
                      git.show(host, name, commit, manifest.PROCFILE))
    files = git.top_level(host, name, commit)
    check_schedules(host, m)
    runtime = manifest.detect_runtime(m, files)
    check_runtime(host, runtime)
    php_fpm = None
    if runtime == "php":
        record.web_root = m.web_root or ("public" if "public" in files else ".")
        record.php = m.php
        php_fpm = php.start_command(php.ensure(host), host.paths.php_fpm_conf, m.php,
                                    host.paths.of(name).php_sessions)
    extra = sorted((set(m.starts) | set(m.health)) - set(site.components))
    if extra:
        host.say(f"note: {manifest.FILE} describes {', '.join(extra)}, which site {name} does "
                 f"not have (add-site {name} --components ... adds it); ignored")
    package_json = git.show(host, name, commit, "package.json")
    skipped: list[str] = []
    if commit == git.UNFETCHED:  # a dry run before the first fetch: the site's own commands
        commands = {**site.commands, **starts}
    else:
        commands, skipped = manifest.start_commands(
            m, runtime, site.components, site.commands, starts,
            manifest.package_scripts(package_json), site.components_chosen, php_fpm)
    for c in skipped:
        to = next(iter(commands))
        host.say(f"note: the app declares no {c} (no start command in {manifest.FILE}, a "
                 f"Procfile, --start or add-site --start): {c} is not started, and nginx "
                 f"sends its requests to {to}")
    health = {c: m.health.get(c, "/") for c in commands}
    health.update({c: p for c, p in health_paths.items() if c in commands})
    with host.step(f"export {commit[:12]} into releases/{rid}"):
        git.export(host, name, commit, rel)
    link_shared(host, name, rel)
    if runtime == "php":
        php.prepare_release(host, name, rel, record.web_root or ".")
    pnpm = have(host, "pnpm")
    steps = manifest.build_steps(m, runtime, files, package_json, pnpm)
    record.deps = manifest.deps_key(
        m, runtime, steps, {f: git.show(host, name, commit, f) or ""
                            for f in manifest.LOCKFILES.get(runtime, ()) if f in files},
        toolchain(host, runtime, pnpm))
    donor = releases.deps_donor(site, record.deps, lambda r: (
        host.paths.of(name).release(r) / manifest.DEPS_DIR[runtime]).is_dir())
    if donor:
        steps = manifest.reuse_steps(runtime, steps, str(host.paths.of(name).release(donor)),
                                     str(rel))
    if m.release:
        steps.append(("release", m.release))
    for label, command in steps:
        host.say(f"==> {label}: {command}")
        if label == "reuse":  # siteops's own copy: as the site user, without a sandbox's start-up
            host.run(users.as_user(name, "/bin/sh", "-c", command), timeout=600)
        else:
            in_sandbox(host, site, rel, label, command)
    record.runtime, record.commands, record.health = runtime, commands, health
    record.health_timeout = m.health_timeout
    record.release_command, record.workers, record.jobs = m.release, m.workers, m.jobs


def in_sandbox(host: Host, site: Site, rel, label: str, command: str) -> None:
    """Run a build or release step in the release, as the site user, sandboxed."""
    unit = units.build_unit(site.name)
    systemd.wait_unloaded(host, unit)
    try:
        # The release command may write where the app may (shared/uploads).
        writable = (host.paths.of(site.name).uploads,) if label == "release" else ()
        host.run(systemd.sandbox_argv(host, site, rel, command, unit, writable),
                 timeout=3600, stream=True)
    except CommandError as exc:
        after = ("; nothing was switched: the live release keeps serving"
                 if label == "release" else "")
        raise SiteopsError(f"{label} failed (exit {exc.code}): {command}{after}\n"
                           f"--- its last lines:\n{exc.stderr}") from exc


def toolchain(host: Host, runtime: str, pnpm: bool) -> str:
    """The runtime's version, part of the dependencies' key (a Python or Node
    upgrade installs them afresh)."""
    program = {"python": "python3", "node": "node", "php": "php"}.get(runtime)
    if program is None:
        return runtime
    version = host.query([program, "--version"], ok=range(256))
    return f"{version.out.strip() or version.err.strip()} pnpm={pnpm}"


def check_schedules(host: Host, m: manifest.Manifest) -> None:
    """Every job's schedule must be a calendar spec systemd accepts."""
    for job, spec in sorted(m.jobs.items()):
        res = host.query(["systemd-analyze", "calendar", spec.schedule], ok=range(256))
        if res.code != 0:
            raise manifest.ManifestError(
                f"{manifest.FILE}: [jobs.{job}] schedule {spec.schedule!r} is not a systemd "
                "calendar spec (see `man systemd.time`, e.g. \"*-*-* 03:00:00\", \"hourly\", "
                "\"*:0/5\")")


def deploy(host: Host, name: str, ref: str = "HEAD", *, repo: str | None = None,
           pushed: str | None = None, keep: int | None = None,
           starts: Sequence[tuple[str, str]] = (), health: Sequence[str] = (),
           keep_warm: bool = False, fetch: bool = True,
           min_free_mb: int = MIN_FREE_MB) -> Site:
    """Deploy ref of site name as a new release, health-gated; returns the
    entry. repo: where to fetch from (default: the site's own); pushed: the
    branch or tag a tenant's git push names (nothing is fetched); starts:
    (component, command) overrides; health: COMPONENT=PATH overrides; fetch:
    False builds from the mirror as it is. Under the site's lock."""
    with registry.site_locked(host, name, f"deploy {name}") as site:
        repo = git.PUSHED if pushed else repo or site.repo
        if not repo:
            raise UsageError(f"site {name} has no repository yet: pass --repo URL")
        preflight(host, site, min_free_mb)
        health_paths = health_overrides(list(health), site.components)  # bad input: no change
        site = instances.recover(host, site)
        started = now()
        # A ref the repository lacks changes nothing: resolved before a release is recorded.
        if fetch and repo != git.PUSHED:
            with host.step(f"fetch {repo}"):
                git.fetch(host, name, repo)
        commit = git.resolve(host, name, ref)
        rid = releases.new_id(site)
        record = Release(ref=pushed or ref, repo=repo, user=who(), started=started,
                         commit=commit,
                         subject=git.subject(host, name, commit))
        site = registry.update_site(host, name, f"deploy {name}",
                                    lambda e: e.releases.update({rid: copy.deepcopy(record)}))
        host.say(f"deploy {name}: release {rid}")
        host.say(f"{'':13}{ref} is {commit[:12]} {record.subject}")
        try:
            build(host, site, rid, record, dict(starts), health_paths)
            previous = releases.live_id(site)

            def went_live(entry: Site) -> None:
                entry.releases[rid] = dataclasses.replace(record, result=model.OK,
                                                          finished=now())
                entry.repo = repo
                if keep:
                    entry.keep = keep
                releases.record_event(entry, "deploy", rid, "ok", started=record.started,
                                      commit=commit, ref=ref, **{"from": previous})
            site = instances.switch(host, site, rid, record, went_live, keep_warm=keep_warm)
        except BaseException as exc:
            fail(host, name, rid, record, exc)
            raise
        host.say(f"release {rid} ({commit[:12]}) {'would be' if host.dry_run else 'is'} live")
        prune(host, site)
        return site


def fail(host: Host, name: str, rid: str, record: Release, exc: BaseException) -> None:
    """Mark release rid failed, remove its files and instances' traces, log it;
    unless the registry already has it live (stopped after its switch, by an
    error or a signal: the next run finishes what followed)."""
    if releases.live_id(registry.get_site(registry.load(host), name)) == rid:
        return
    error = releases.error_text(exc)

    def mark(entry: Site) -> None:
        entry.releases[rid] = dataclasses.replace(record, result=model.FAILED, error=error,
                                                  finished=now())
        releases.record_event(entry, "deploy", rid, "failed", started=record.started,
                              commit=record.commit, ref=record.ref, error=error)
    registry.update_site(host, name, f"deploy {name}: failed", mark)
    with host.step(f"remove failed release {rid}"):
        instances.stop_build(host, name)
        instances.remove_release(host, name, rid)


def prune(host: Host, site: Site) -> None:
    name = site.name
    doomed = releases.to_prune(site, site.keep)
    if not doomed:
        return
    with host.step(f"prune {len(doomed)} release(s): {', '.join(doomed)}"):
        for rid in doomed:
            instances.remove_release(host, name, rid)
    registry.update_site(host, name, f"deploy {name}: prune",
                         lambda e: [e.releases.pop(r, None) for r in doomed])
