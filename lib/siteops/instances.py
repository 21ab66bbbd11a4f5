"""The health-gated switch from the live instances of a site to a release.

    start   the release on the spare port of each component's block, beside the
            live instances, and its workers beside the live ones (a drop-in
            pins the release and command)
    health  every new instance answers GET <health path> with 2xx/3xx within
            the timeout; an instance or worker that exits or restarts fails at once
    switch  nginx's upstreams move to the new ports (`nginx -t`, then reload:
            old workers finish their requests on the old instances); `current`
            is swapped with rename(2); the registry records the new live release
    workers the old workers stop (SIGTERM, then their stop timeout) and the
            command waits for their exit: once it returns, no job is taken
            by the old release's code
    drain   the old instances get no new connections; once their established
            connections are gone (or after DRAIN_SECONDS) systemd is told to
            stop them, without the command waiting for the stop: the next
            command on the site waits for a stop still under way (recover)
    jobs    the release's scheduled jobs replace the old release's timers

With keep_warm (deploy and rollback --keep-warm) the old web instances are
not stopped but kept running, out of nginx, recorded as the site's `warm`
release: a switch back to that release reuses them (still health-checked)
instead of starting and waiting for new ones. Any other switch stops them
first; their workers are never kept.

Until the registry records the switch, a failure stops the new instances and
puts nginx and `current` back; `current` and the registry's record change
together, SIGINT and SIGTERM held between the two. `recover` brings a site
whose deploy was killed back to what the registry says.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import fastcgi, model, network, nginx, php, registry, releases, systemd, units, usage, users
from .errors import SiteopsError
from .journal import now
from .model import Live, Release, Site
from .host import Host, clean
from .signals import uninterrupted

DRAIN_SECONDS = 30
POLL = 0.25  # the longest wait between two health checks; the first ones come sooner
WORKER_SETTLE = 1.5  # a new worker must still run this long after its start


def unit_state(host: Host, unit: str) -> tuple[str, int]:
    """(ActiveState, NRestarts) of a unit."""
    props = systemd.show(host, unit, "ActiveState", "NRestarts")
    return props.get("ActiveState", "unknown"), int(props.get("NRestarts") or 0)


def http_status(host: Host, domain: str, port: int, path: str, script: Path | None = None
                ) -> int:
    """Status of GET http://127.0.0.1:port/path with the site's Host; 0 if none.
    With script (a PHP-FPM instance's front controller), the same GET asked
    in FastCGI, as nginx will ask it."""
    if script is not None:
        argv = [sys.executable, "-I", fastcgi.__file__, str(port), str(script), path, domain]
    else:
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                "-H", f"Host: {domain}", f"http://127.0.0.1:{port}{path}"]
    res = host.query(argv, ok=range(256))
    return int(res.out.strip() or 0) if res.out.strip().isdigit() else 0


def log_sizes(host: Host, site: Site) -> dict[Path, int]:
    """Current sizes of the site's app logs, to show only what a new instance wrote."""
    files = host.paths.of(site.name)
    sizes = {}
    for c in site.components:
        for f in (files.app_log(c), files.app_error_log(c)):
            sizes[f] = f.stat().st_size if f.exists() else 0
    return sizes


def new_log_lines(sizes: dict[Path, int], limit: int = 15) -> str:
    """The last lines written to each app log since sizes were taken."""
    parts = []
    for path, size in sizes.items():
        try:
            with open(path, "rb") as fh:
                fh.seek(size)
                lines = clean(fh.read().decode(errors="replace")).splitlines()[-limit:]
        except FileNotFoundError:
            continue
        if lines:
            parts.append(f"--- last lines of {path}:\n" + "\n".join(lines))
    return "\n".join(parts)


def render_dropins(host: Host, site: Site, rid: str, record: Release,
                   offset: int, doors: bool = False) -> dict[Path, str]:
    """The drop-ins that pin release rid and its commands on its instances and
    workers at port offset, by path; doors: those of its doors too, and its
    instances and workers stop once their door no longer needs them.
    SiteopsError if a command's program is not in the release."""
    name = site.name
    rel = host.paths.of(name).release(rid)
    ports = units.instance_ports(site, offset, record)
    files = {host.paths.dropin(units.instance(name, c, p)): systemd.render_dropin(
                name, rid, rel, systemd.resolve_command(rel, record.commands[c]), ports,
                sleeps=doors)
             for c, p in ports.items()}
    files_of = host.paths.of(name)
    workers = units.worker_instances(name, record.workers, offset)
    for unit, kind in workers.items():
        command = systemd.resolve_command(rel, record.workers[kind].command)
        files[host.paths.dropin(unit)] = systemd.render_dropin(
            name, rid, rel, command, ports, log=files_of.worker_log(kind), sleeps=doors)
    if doors:
        woken = [] if site.held else sorted(workers)
        for c, p in ports.items():
            files.update(systemd.render_door_dropins(
                host.paths, name, units.instance(name, c, p), units.door_port(p, offset), woken))
    return files


def live_dropins(host: Host, site: Site) -> dict[Path, str]:
    """The live instances' drop-ins as the registry renders them (none before
    the first deploy, or when the live release is gone from disk)."""
    record = site.releases.get(site.live.release) if site.live else None
    if record is None or not record.commands:
        return {}
    assert site.live is not None
    try:
        return render_dropins(host, site, site.live.release, record, site.live.offset,
                              site.live.doors)
    except SiteopsError:  # the release is gone; audit's `current` check says so
        return {}


def ensure_dropins(host: Host, site: Site, rid: str, record: Release,
                   offset: int, doors: bool = False) -> list[str]:
    """Pin release rid and its commands on its instances and workers at offset
    (and its doors, with doors; drop-ins checked with `systemd-analyze
    verify`, then daemon-reload); return the units."""
    names = units.instance_units(site, record, offset) + (
        [units.door_service(s) for s in units.doors(site, record, offset)] if doors else [])
    systemd.write_units(host, render_dropins(host, site, rid, record, offset, doors), names,
                        "instance drop-ins")
    return names


def start(host: Host, site: Site, rid: str, record: Release, offset: int,
          warm: bool = False, doors: bool = False) -> list[str]:
    """Start release rid at port offset beside the live instances; return the
    new units. warm: its web instances may run already (kept warm), their
    ports are theirs (the health check still checks who listens). doors: with
    its doors, whose services hold the instances up until the site has been
    idle for its sleep time (started together: nothing else needs them)."""
    ports = units.instance_ports(site, offset, record)
    busy = [] if warm else sorted(set(ports.values()) & network.listening_ports(host))
    if busy:
        raise SiteopsError(f"port {busy[0]} of site {site.name} is in use by "
                           f"{network.describe_holders(network.holders(host, busy[0]))}; "
                           "free it (ss -ltnp) and deploy again")
    workers = {} if site.held else units.worker_instances(site.name, record.workers, offset)
    with host.step(f"{'warm ' if warm else ''}release {rid} on port(s) "
                   f"{', '.join(map(str, ports.values()))}"
                   + (f" and {len(workers)} worker(s)" if workers else "")
                   + (" (workers held)" if site.held and record.workers else "")):
        ensure_dropins(host, site, rid, record, offset, doors)  # the held workers' too
        # One transaction: a sleeping site's instances stop as soon as nothing
        # needs them, and their doors' services (up once the instance answers,
        # at most systemd.WAKE_TIMEOUT) need them from the start.
        started = units.web_instances(site, record, offset) + list(workers) + (
            units.release_doors(site, record, offset) if doors else [])
        # Deploys and rollbacks in quick succession start the same instance
        # names often: not refused by the start rate limit.
        systemd.deliberately(host, "start", started, timeout=systemd.WAKE_TIMEOUT + 60)
    return started


def wait_healthy(host: Host, site: Site, rid: str, record: Release, offset: int,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once every new instance passes its health check and every new
    worker still runs; raise if one exits or the timeout passes."""
    ports = units.instance_ports(site, offset, record)
    timeout = record.health_timeout
    started = clock()
    deadline = started + timeout
    pending = dict(ports)
    domain = site.domains[0]
    paths = ", ".join(f"{c} {record.health[c]}" for c in ports)
    web_root = host.paths.of(site.name).release(rid) / (record.web_root or ".")
    scripts = {c: php.health_script(web_root, record.health[c]) for c in ports
               if php.is_fpm(record.commands.get(c, ""))}
    with host.step(f"health check of {paths}"):
        if not host.waits(f"until {', '.join(f'{c} on port {p}' for c, p in ports.items())} "
                          f"answer 2xx/3xx (at most {timeout}s)"):
            return
        polls = 0
        while pending:
            for c, port in list(pending.items()):
                unit = units.instance(site.name, c, port)
                exited(host, unit)
                code = http_status(host, domain, port, record.health[c], scripts.get(c))
                if 200 <= code < 400:
                    check_owner(host, unit, port)
                    host.say(f"{'':13}{c} answered {code} on port {port}")
                    del pending[c]
            if pending:
                if clock() > deadline:
                    c = next(iter(pending))
                    raise SiteopsError(f"{c} did not pass its health check GET "
                                       f"{record.health[c]} on port {pending[c]} "
                                       f"within {timeout}s")
                sleep(min(POLL, 0.05 * 2 ** polls))  # most apps are up within 0.1-0.5 s
                polls += 1
        workers = {} if site.held else units.worker_instances(site.name, record.workers,
                                                                 offset)
        if workers:
            sleep(max(0.0, started + WORKER_SETTLE - clock()))
        for unit in workers:
            exited(host, unit)


def exited(host: Host, unit: str) -> None:
    """SiteopsError if unit has exited or restarted since it was started."""
    state, restarts = unit_state(host, unit)
    if restarts or state in ("failed", "inactive", "deactivating"):
        raise SiteopsError(f"{unit} exited while starting" + (
            f" (restarted {restarts} time(s))" if restarts else f" ({state})"))


def check_owner(host: Host, unit: str, port: int) -> None:
    """Refuse a port whose listener is not unit: whatever answered the health
    check is not the release (a process of another site that took the port)."""
    found = network.holders(host, port)
    if not found or any(l["units"] != [unit] for l in found):
        raise SiteopsError(f"port {port} answered, but its listener is "
                           f"{network.describe_holders(found)}, not {unit}: not switching")


def stop(host: Host, names: list[str], wait: bool = True) -> None:
    """Stop the units names; without wait, systemd is told to and the command goes on."""
    if names:
        host.run(["systemctl", "stop", *([] if wait else ["--no-block"]), *names])


def drain(host: Host, ports: list[int], clock=time.monotonic, sleep=time.sleep) -> None:
    """Wait until nothing is connected to ports any more, at most DRAIN_SECONDS."""
    if not host.waits(f"until no connection is left on port(s) "
                      f"{', '.join(map(str, ports))} (at most {DRAIN_SECONDS}s)"):
        return
    deadline = clock() + DRAIN_SECONDS
    while network.connections_to(host, ports) and clock() < deadline:
        sleep(POLL)


def switch(host: Host, site: Site, rid: str, record: Release,
           on_live: Callable[[Site], None], keep_warm: bool = False) -> Site:
    """Make release rid the live one with no dropped request; return the updated
    registry entry. on_live(site) adds its own changes to the registry update
    that records the switch. keep_warm: the old web instances keep running."""
    name = site.name
    sleeps = site.sleep_after is not None
    if sleeps and keep_warm:
        host.say(f"{'':13}{name} sleeps when idle: nothing is kept warm (a release of it "
                 "starts on its first request)")
        keep_warm = False
    warm = site.warm if site.warm and site.warm.release == rid and not sleeps and all(
        unit_state(host, u) == ("active", 0) for u in units.warm_instances(site)) else None
    if site.warm and not warm:  # another release, or one of them stopped or restarted
        site = cool(host, site)
    previous = site.live
    live = warm or Live(rid, units.spare_offset(site, network.listening_ports(host)), sleeps)
    old = leaving(site)
    sizes = log_sizes(host, site)
    new_units: list[str] = []
    current = host.paths.of(name).current
    before = host.snapshot(current)

    def commit(entry: Site) -> None:
        entry.live = live
        entry.warm = previous if keep_warm and old.web else None
        on_live(entry)

    committed = False
    try:
        new_units = start(host, site, rid, record, live.offset, warm=bool(warm),
                          doors=live.doors)
        wait_healthy(host, site, rid, record, live.offset)
        serving = site.copy(live=live)
        serving.releases[rid] = record  # what it runs, before the registry records it
        nginx.ensure_site(host, serving)
        # `current` and the registry move together: a signal between the two
        # would run the put-back (or a failed deploy's clean-up) on a release
        # that nginx and `current` already serve. Held until both are done,
        # it is delivered once the registry says rid is live.
        with uninterrupted():
            with host.step(f"current -> releases/{rid}"):
                host.symlink(current, f"releases/{rid}")
            site = registry.update_site(host, name, f"switch {name} to {rid}", commit)
            committed = True
    except BaseException as exc:
        if committed:  # live in the registry: the next run finishes what follows (recover)
            raise
        # Traffic first, then the processes: nginx back on the live instances,
        # the new ones drained before they stop (stopped first, they would
        # answer requests nginx still sends them with 502). Not cut short by a
        # second Ctrl-C or a SIGTERM.
        with uninterrupted(), host.step("put the live release back"):
            try:
                nginx.ensure_site(host, site)
            finally:  # an nginx that cannot reload serves the live ones still
                host.put_back(current, before)
                if new_units:
                    drain(host, list(units.instance_ports(site, live.offset, record).values()))
                stop(host, new_units)
        detail = new_log_lines(sizes)
        if isinstance(exc, SiteopsError) and detail:
            raise SiteopsError(f"{exc}\n{detail}") from exc
        raise

    retire(host, site, old)
    if live.doors:
        host.say(f"{'':13}{name} sleeps when idle: release {rid} goes back to sleep after "
                 f"{site.sleep_after}s without a request")
    systemd.ensure_jobs(host, site)
    return site


@dataclass(frozen=True)
class Leaving:
    """What of a site a switch leaves: the live release's processes (web
    instances and workers), its web instances and doors, the units started at
    boot, and the web instances' ports."""
    processes: list[str]
    web: list[str]
    boot: list[str]
    ports: list[int]


def leaving(site: Site) -> Leaving:
    doors = units.live_door_units(site)
    return Leaving(units.live_instances(site), units.live_web(site) + doors,
                   units.always_on(site), list((units.live_ports(site) or {}).values()))


def retire(host: Host, site: Site, old: Leaving) -> None:
    """After a switch to site's live release: only it (or its doors) starts at
    boot; the old workers are stopped and waited for, the old web instances
    and doors drained and stopped without waiting (or kept warm)."""
    boot = units.always_on(site)
    on = [u for u in boot if u not in old.boot]
    with host.step(f"{', '.join(on or boot)} enabled at boot"):
        if on:
            host.run(["systemctl", "--no-reload", "enable", "--quiet", *on])
        # Kept warm or not, only the live release (or its doors) starts at boot.
        off = [u for u in dict.fromkeys(old.boot + old.processes) if u not in boot]
        # Redis going to sleep with the site: the manager must forget that boot
        # wants it (a reload), or it never counts as unneeded.
        reload = [] if units.redis_unit(site.name) in off else ["--no-reload"]
        if off:
            host.run(["systemctl", *reload, "disable", "--quiet", *off])
    # The old workers have exited before the command returns: a job enqueued
    # after it is taken by the new release's workers only.
    old_workers = [u for u in old.processes if u not in old.web]
    if old_workers:
        with host.step(f"stop {', '.join(old_workers)}"):
            stop(host, old_workers)
            forget_failed(host, site.name, old_workers)
    retired = [u for u in old.web if not site.warm]
    if retired:
        with host.step(f"drain and stop {', '.join(retired)}"):
            drain(host, old.ports)
            stop(host, retired, wait=False)
    if site.warm:
        host.say(f"{'':13}kept warm for a rollback to {site.warm.release}: {', '.join(old.web)} "
                 f"({memory_mb(host, old.web)} MB)")


def forget_failed(host: Host, name: str, stopped: list[str]) -> None:
    """Say how each of the retired units that ended failed ended (a worker that
    exits non-zero on SIGTERM, or was killed after its stop timeout), then
    reset it: a retired instance left `failed` would count in every
    `systemctl --failed` and failed-unit alert until the next deploy."""
    shown = systemd.show_many(host, stopped, "ActiveState", "Result")
    failed = [u for u in stopped if shown.get(u, {}).get("ActiveState") == "failed"]
    for unit in failed:
        host.say(f"{'':13}{unit} ended {shown[unit].get('Result', '?')} when it was stopped "
                 f"(its log: logs {name} worker)")
    if failed:
        host.run(["systemctl", "reset-failed", *failed])


def cool(host: Host, site: Site) -> Site:
    """Stop the instances kept warm; returns the entry. The registry forgets
    them first: stopped between the two, they are strays recover stops."""
    warm = units.warm_instances(site)
    site = registry.update_site(host, site.name, f"{site.name}: warm instances stopped",
                                lambda entry: setattr(entry, "warm", None))
    with host.step(f"stop the warm instances {', '.join(warm)}"):
        stop(host, warm)
    return site


def memory_mb(host: Host, names: list[str]) -> str:
    """What the units names use now, in MB, or "?"."""
    used = usage.units_memory(host, names)
    return "?" if used is None else f"{used / 2**20:.1f}"


def dropins_match(host: Host, site: Site) -> bool:
    """True if the live instances' drop-ins are what the registry renders."""
    return all(host.read(path) == text for path, text in live_dropins(host, site).items())


def refresh(host: Host, site: Site, changed_units: list[str], force: bool = False) -> Site:
    """Make the live release run under unit files that changed (or drop-ins that
    drifted, with force): the same health-gated switch as a deploy, to the same
    release on fresh instances, so no request is dropped. Returns the entry."""
    name, live = site.name, site.live
    templates = {units.app_unit(name, c) for c in site.components} | {units.worker_unit(name)}
    if not live or not (force or templates & set(changed_units)):
        return site
    record = site.releases.get(live.release)
    if record is None or not record.commands:  # an entry from before deploys recorded them
        with host.step(f"restart {', '.join(units.live_instances(site))}"):
            for unit in units.live_instances(site):
                host.run(["systemctl", "restart", unit])
        return site
    with registry.site_locked(host, name, f"restart {name} on new unit files") as site:
        return restart(host, site, "unit files changed")


def restart(host: Host, site: Site, reason: str) -> Site:
    """Move the live release to fresh instances and workers with the switch a
    deploy uses (the caller holds the site lock); returns the entry. What a
    killed command left behind is cleaned up first (recover)."""
    site = recover(host, site)
    assert site.live is not None, "restart needs a live release"
    rid = site.live.release
    host.say(f"{'':13}{reason}: moving release {rid} of {site.name} to fresh instances")
    return switch(host, site, rid, site.releases[rid],
                  lambda entry: releases.record_event(entry, "restart", rid, "ok",
                                                      reason=reason, **{"from": rid}))


def running_instances(host: Host, name: str) -> list[str]:
    """Every loaded instance of the site's templates (components, workers, doors)."""
    out = host.query(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                      f"{name}-*@*.service", f"{name}-*@*.socket"]).out
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def stop_build(host: Host, name: str) -> None:
    """Stop a build a killed deploy left running (systemd-run outlives its caller)."""
    if systemd.is_active(host, units.build_unit(name)):
        host.run(["systemctl", "stop", units.build_unit(name)])


def remove_release(host: Host, name: str, rid: str) -> None:
    """Delete a release directory, as the site user (it is the site's tree)."""
    path = host.paths.of(name).release(rid)
    if path.exists() or path.is_symlink():
        host.run(users.as_user(name, "rm", "-rf", "--one-file-system", "--", path))


def recover(host: Host, site: Site) -> Site:
    """Bring the site back to what the registry says after a killed deploy,
    rollback or restart (run under the site lock). The registry decides: a
    release it does not record as live is not live, however far its switch
    got. Traffic leaves a release before its files do:

      1. the live instances run (started if a kill left them stopped), or,
         for a site that sleeps, their doors listen;
      2. nginx points at their ports and `current` at the live release;
      3. every other instance of the site (a half-started release, an old
         one still stopping) stops, but those kept warm;
      4. releases still marked building are marked failed, their build
         stopped and their files removed.

    Returns the updated entry."""
    name = site.name
    live = set(units.live_instances(site) + units.live_door_units(site))  # awake or asleep
    kept = set(units.warm_instances(site)) - live  # running or not: a switch to them starts them
    for unit in units.always_on(site):
        with host.step(f"{unit} running"):
            systemd.ensure_started(host, unit)
    nginx.ensure_site(host, site)
    if site.live and host.paths.of(name).release(site.live.release).is_dir():
        with host.step(f"current -> releases/{site.live.release}"):
            host.symlink(host.paths.of(name).current, f"releases/{site.live.release}")
    strays = [u for u in running_instances(host, name) if u not in live | kept]
    with host.step(f"no stray instances of {name}"):
        for unit in strays:
            state, _ = unit_state(host, unit)
            if state != "inactive":
                stop(host, [unit])
            if state == "failed":
                host.run(["systemctl", "reset-failed", unit])
        # Killed between the switch and the disable: neither strays nor the
        # instances kept warm start at boot.
        for unit in [*strays, *sorted(kept)]:
            if systemd.is_enabled(host, unit):
                host.run(["systemctl", "--no-reload", "disable", "--quiet", unit])
    stale = releases.stale(site)
    if stale:
        def mark(entry):
            for rid in stale:
                rel = entry.releases[rid]
                rel.result, rel.error, rel.finished = model.FAILED, "interrupted", now()
        site = registry.update_site(host, name, f"{name}: clean up an interrupted deploy", mark)
        for rid in stale:
            with host.step(f"remove interrupted release {rid}"):
                stop_build(host, name)
                remove_release(host, name, rid)
    systemd.ensure_jobs(host, site)
    return site


def hold(host: Host, name: str, held: bool, by: str) -> Site:
    """Hold the site's workers and timers (stopped, and not started by later
    deploys), or run them again (a sleeping site's: at its next wake, its
    doors told again which workers to start); returns the entry."""
    site = registry.update_site(host, name, by, lambda e: setattr(e, "held", held))
    workers = list(units.live_workers(site))
    with host.step(f"{name}: workers and timers {'held' if held else 'running'}"):
        if site.live and site.live.doors:  # a sleeping site's doors start its workers
            ensure_dropins(host, site, site.live.release, site.releases[site.live.release],
                           site.live.offset, doors=True)
        if held and workers:  # not started at boot either
            host.run(["systemctl", "--no-reload", "disable", "--now", "--quiet", *workers])
        elif not held and not (site.live and site.live.doors):
            for unit in workers:
                systemd.ensure_started(host, unit)
        systemd.ensure_jobs(host, site)
    return site
