"""deploy: build a commit into a new release and switch to it without dropping a request."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os

from .. import cli, git, instances, manifest, model, registry, releases, systemd, users, validate
from ..errors import CommandError, SiteopsError, UsageError
from ..journal import now, who
from ..model import Release, Site
from ..host import Host

DESCRIPTION = """\
Deploy a commit of the site's repository as a new release, health-gated, with
no dropped request. If anything fails, the live release keeps serving exactly
as before and the command exits non-zero with the app's last log lines.

Steps:
  lock      the site's own lock; a second deploy or rollback of it fails at once
  preflight the site is ready, the disk has room, the runtime is installed
  fetch     into a cached mirror (/var/lib/siteops/mirrors/NAME.git), then the
            ref is exported into releases/<UTC timestamp>; the commit is recorded
  link      shared/.env, shared/uploads and shared/logs into the release
  build     install and build as the site user in a sandbox with the services'
            hardening (node: pnpm install --frozen-lockfile when pnpm-lock.yaml
            is there, npm without pnpm; python: venv + requirements.txt; any
            command from siteops.toml); output streamed, one header per step.
            When the lockfiles, install commands and runtime version are those
            of a kept release, its dependencies are copied instead (reuse)
  release   the release command (siteops.toml release, Procfile release:
            database migrations) in the same sandbox with the site's .env
            (shared/uploads writable too, as for the app); if it fails the
            deploy stops and the live release keeps serving
  start     on the spare port of each component's block (3101 when 3100 is
            live, and back), beside the live instance; workers beside the live
            workers
  health    GET the health path (siteops.toml, default /) until 2xx/3xx
  switch    nginx upstreams to the new ports (nginx -t, reload), `current`
            swapped with rename(2) as the registry records it; the old workers
            stopped (the command waits: no job enqueued after it returns is
            taken by old code); old instances drained, then stopped (the
            command does not wait for their stop); the release's scheduled
            jobs replace the old timers. With --keep-warm
            the old web instances keep running out of nginx, for a rollback
            with no start; a later switch elsewhere stops them
  prune     keep the newest --keep good releases (never the live one nor the
            rollback target), failed ones first

The app repository may hold siteops.toml (runtime, install, build,
health_timeout, release, per component start and health, workers, jobs) or
a Procfile (web, worker, release); see README.md. Private
repositories: put an SSH deploy key at /etc/siteops/deploy-keys/NAME (root,
0600). PORT, FRONTEND_PORT and API_PORT are set per instance; do not set them
in .env.
"""

EPILOG = """\
examples:
  sudo deploy shop --repo https://github.com/acme/shop.git      first deploy
  sudo deploy shop                                              default branch again
  sudo deploy shop --ref v1.4.2
  sudo deploy shop --dry-run                                    print the plan
  sudo deploy shop --keep-warm                                  quick rollback after
"""

MIN_FREE_MB = 500


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("deploy", DESCRIPTION, EPILOG)
    p.add_argument("name", type=validate.site_name, help="the site to deploy")
    p.add_argument("--repo", type=validate.repo_url, metavar="URL",
                   help="git repository (https://, ssh://, file://, user@host:path or a "
                        "path); remembered after the first successful deploy")
    p.add_argument("--ref", type=validate.git_ref, default="HEAD", metavar="REF",
                   help="branch, tag or commit to deploy (default: the default branch)")
    p.add_argument("--start", action="append", type=validate.start_command, default=[],
                   metavar="COMPONENT=COMMAND", help="override a component's start command")
    p.add_argument("--health", action="append", default=[], metavar="COMPONENT=PATH",
                   help="override a component's health path")
    p.add_argument("--keep", type=validate.keep_count, default=None, metavar="N",
                   help=f"good releases to keep (default {model.DEFAULT_KEEP}; remembered)")
    p.add_argument("--min-free-mb", type=validate.number("--min-free-mb", 0, 10**7),
                   default=MIN_FREE_MB, metavar="MB",
                   help=f"refuse to deploy with less free disk than this (default {MIN_FREE_MB})")
    p.add_argument("--keep-warm", action="store_true",
                   help="keep the live release's web instances running after the switch, out of "
                        "nginx, so that a rollback to it needs no start (its memory, shown, "
                        "stays in use until the next deploy, rollback or restart)")
    p.add_argument("--no-fetch", action="store_true",
                   help="build REF from the site's mirror as it is, without fetching (a "
                        "restored site whose repository is not reachable from here)")
    return p


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


def build(host: Host, site: Site, rid: str, record: Release, args: argparse.Namespace,
          health_paths: dict[str, str]) -> None:
    """Export, link and build release rid of record.commit; record what it runs
    (health_paths: the --health overrides, parsed)."""
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
    extra = sorted((set(m.starts) | set(m.health)) - set(site.components))
    if extra:
        host.say(f"note: {manifest.FILE} describes {', '.join(extra)}, which site {name} does "
                 f"not have (add-site {name} --components ... adds it); ignored")
    package_json = git.show(host, name, commit, "package.json")
    skipped: list[str] = []
    if commit == git.UNFETCHED:  # a dry run before the first fetch: the site's own commands
        commands = {**site.commands, **dict(args.start)}
    else:
        commands, skipped = manifest.start_commands(
            m, runtime, site.components, site.commands, dict(args.start),
            manifest.package_scripts(package_json), site.components_chosen)
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
    unit = instances.build_unit(site.name)
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
    program = {"python": "python3", "node": "node"}.get(runtime)
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


def run(host: Host, args: argparse.Namespace) -> None:
    name = args.name
    with registry.site_locked(host, name, f"deploy {name}") as site:
        pushed = getattr(args, "pushed", None)  # a tenant's git push (commands/tenant.py)
        repo = git.PUSHED if pushed else args.repo or site.repo
        if not repo:
            raise UsageError(f"site {name} has no repository yet: pass --repo URL")
        preflight(host, site, args.min_free_mb)
        health_paths = health_overrides(args.health, site.components)  # bad input: no change
        site = instances.recover(host, site)
        started = now()
        # A ref the repository lacks changes nothing: resolved before a release is recorded.
        if not args.no_fetch and repo != git.PUSHED:
            with host.step(f"fetch {repo}"):
                git.fetch(host, name, repo)
        commit = git.resolve(host, name, args.ref)
        rid = releases.new_id(site)
        record = Release(ref=pushed or args.ref, repo=repo, user=who(), started=started,
                         commit=commit,
                         subject=git.subject(host, name, commit))
        site = registry.update_site(host, name, f"deploy {name}",
                                    lambda e: e.releases.update({rid: copy.deepcopy(record)}))
        host.say(f"deploy {name}: release {rid}")
        host.say(f"{'':13}{args.ref} is {commit[:12]} {record.subject}")
        try:
            build(host, site, rid, record, args, health_paths)
            previous = releases.live_id(site)

            def went_live(entry: Site) -> None:
                entry.releases[rid] = dataclasses.replace(record, result=model.OK,
                                                          finished=now())
                entry.repo = repo
                if args.keep:
                    entry.keep = args.keep
                releases.record_event(entry, "deploy", rid, "ok", started=record.started,
                                      commit=commit, ref=args.ref, **{"from": previous})
            site = instances.switch(host, site, rid, record, went_live,
                                    keep_warm=args.keep_warm)
        except BaseException as exc:
            fail(host, name, rid, record, exc)
            raise
        host.say(f"release {rid} ({commit[:12]}) {'would be' if host.dry_run else 'is'} live")
        prune(host, site)


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


def main(argv: list[str] | None = None, host: Host | None = None,
         parser: argparse.ArgumentParser | None = None) -> int:
    return cli.main("deploy", parser or build_parser(), run, argv, host)
