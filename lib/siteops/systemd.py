"""systemd: a slice per site and hardened units for its components and Redis.

Each component is a template, NAME-COMPONENT@.service, whose instance name is
the port it listens on: deploy runs the new release on the spare port of the
component's block beside the live one. A drop-in per instance
(NAME-COMPONENT@PORT.service.d/siteops-release.conf) pins the release
directory and start command, so an instance keeps running the release it was
started with whatever happens to `current`.

Units are checked with `systemd-analyze verify` before daemon-reload; a unit
whose file changed while running is restarted so the change takes effect.
Builds run through `systemd-run` with the same hardening as the services."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import time
from pathlib import Path


from . import safefs, units
from .errors import CommandError, SiteopsError
from .model import Job, Site
from .host import Host
from .paths import Paths
from .templates import render


# Per-site limits on its slice (every process of the site, builds included),
# sized for a small VPS running a handful of sites; `limits NAME` changes them.
# A sleeping site: its Redis, instances and workers stop once nothing needs them
# (their door's service has exited); a wake that takes longer than this fails.
UNNEEDED = "StopWhenUnneeded=yes"
WAKE_TIMEOUT = 30
DEFAULT_LIMITS = {"memory_max": "1G", "tasks_max": 512, "cpu_weight": 100, "io_weight": 100}


def limits(site: Site) -> dict:
    """The site's slice limits: its own settings over the defaults."""
    return {**DEFAULT_LIMITS, **site.limits.set()}


def limit_properties(site: Site) -> list[str]:
    """The slice's limits as systemd properties (the slice file says the same)."""
    lim = limits(site)
    return [f"MemoryMax={lim['memory_max']}", f"TasksMax={lim['tasks_max']}",
            f"CPUWeight={lim['cpu_weight']}", f"IOWeight={lim['io_weight']}"]


def socket_bind(site: Site) -> list[str]:
    """SocketBind rules: a site's units may bind only its own three port blocks
    (enforced where systemd has BPF: Debian 13, Ubuntu 24.04; nftables covers
    Debian 12, see nftables.py)."""
    return [f"SocketBindAllow=tcp:{first}-{last}"
            for first, last in units.block_ranges(site.slot)] + ["SocketBindDeny=any"]


def render_units(host: Host, site: Site) -> dict[str, str]:
    """The slice and unit files of a site, by unit name."""
    name, tree = site.name, host.paths.of(site.name)
    hardening = render("systemd/hardening.conf")
    binds = "\n".join(socket_bind(site))
    lim = limits(site)
    common = dict(name=name, current=tree.current, env=tree.env, uploads=tree.uploads,
                  hardening=hardening, socket_bind=binds)
    files = {units.slice_name(name): render("systemd/site.slice", name=name, **lim)}
    for c in site.components:
        files[units.app_unit(name, c)] = render(
            "systemd/app.service", component=c, port=site.ports[c], command=site.commands[c],
            out_log=tree.app_log(c), error_log=tree.app_error_log(c), **common)
    files[units.worker_unit(name)] = render("systemd/worker.service", **common)
    files[units.redis_unit(name)] = render(
        "systemd/redis.service", name=name, port=site.ports["redis"], log=tree.redis_log,
        data=tree.redis, conf=host.paths.redis_conf(name), hardening=hardening,
        socket_bind=binds, unneeded=UNNEEDED if site.sleep_after is not None else "")
    if site.sleep_after is not None:
        door = units.door_template(name)
        files[door] = render("systemd/door.socket", name=name)
        files[units.door_service(door)] = render(
            "systemd/door.service", name=name, door=host.paths.door_program, idle=site.sleep_after,
            timeout=WAKE_TIMEOUT, start_timeout=WAKE_TIMEOUT + 10, log=tree.door_log,
            hardening=hardening, socket_bind=binds)
    return files


def deliberately(host: Host, verb: str, names: list[str], timeout: float = 900) -> None:
    """`systemctl VERB names` (start, restart) that systemd's start rate limit
    (5 starts in 10 s) does not refuse: it is there for crash loops, and a
    deliberate start after quick deploys, rollbacks or drain changes is not
    one. A unit refused by it has its failure reset and is started again."""
    try:
        host.run(["systemctl", verb, *names], timeout=timeout)
    except CommandError:
        limited = [u for u in names if show(host, u, "Result").get("Result") == "start-limit-hit"]
        if not limited:
            raise
        host.run(["systemctl", "reset-failed", *limited])
        host.run(["systemctl", verb, *names], timeout=timeout)


def is_active(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-active", "--quiet", unit], ok=range(256)).code == 0


def is_enabled(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-enabled", "--quiet", unit], ok=range(256)).code == 0


# Where the distribution's units are: the only ones besides its own that a
# unit siteops writes refers to (network.target, postgresql.service).
VENDOR_UNITS = ("/usr/lib/systemd/system", "/lib/systemd/system")


def owner(path: Path) -> str:
    """The unit a unit file or drop-in belongs to."""
    return path.parent.name[:-2] if path.parent.name.endswith(".d") else path.name


def verify(host: Host, files: dict[Path, str], checked: list[str], what: str) -> None:
    """`systemd-analyze verify` of the units named in checked as they will be
    once files (real path: text) are written, before any is: the files go to
    a root-only candidate directory, with the drop-ins already beside those
    units, and the verify's unit path is that directory and the
    distribution's units. Against /etc/systemd/system the verify reads every
    unit file there: 0.4 s for a site's three units on a host of 100 sites,
    growing with each; this way some 30 ms at any size. SiteopsError, with
    systemd's reason, if it fails; nothing is run in a dry run."""
    if host.dry_run or not checked:
        return
    base = host.paths.unit("x").parent
    stage = host.paths.state / "candidates"
    safefs.ensure_dir(stage, 0o700, 0, 0)
    candidate = Path(tempfile.mkdtemp(prefix="units-", dir=stage))
    try:
        texts = {path.relative_to(base): text for path, text in files.items()}
        # Each unit checked or given a file, with what systemd reads with it: its
        # file or template, its drop-ins (a drop-in alone makes a unit that
        # fails to load, and one that Requires= it fails its verify).
        for name in dict.fromkeys([*checked, *(owner(path) for path in files)]):
            for unit in dict.fromkeys((name, re.sub(r"@[^.]+\.", "@.", name))):
                for part in [unit] + [f"{unit}.d/{c}" for c in safefs.listdir(base / f"{unit}.d")]:
                    if Path(part) not in texts and (text := host.read(base / part)) is not None:
                        texts[Path(part)] = text
        for rel, text in texts.items():
            safefs.write(candidate / rel, text.encode(), 0o644)
        argv = [str(candidate / n) if Path(n) in texts else n for n in checked]
        res = host.query(["systemd-analyze", "verify", "--man=no", *argv], ok=range(256),
                         env={"SYSTEMD_UNIT_PATH": ":".join((str(candidate), *VENDOR_UNITS))})
    finally:
        shutil.rmtree(candidate, ignore_errors=True)
    if res.code != 0:
        lines = (res.err or res.out).strip().replace(f"{candidate}/", "").splitlines()
        raise SiteopsError(f"{what}: `systemd-analyze verify` failed, nothing written: "
                           f"{(lines or ['no output'])[-1]}")


def write_units(host: Host, files: dict[Path, str], checked: list[str], what: str) -> list[Path]:
    """Write unit files and drop-ins (real path: text), verified first (the
    units named in checked, verify()), and daemon-reload if the manager has
    one of the units they belong to loaded (any_loaded); return the paths
    that changed."""
    if any(host.read(path) != text for path, text in files.items()):
        verify(host, files, checked, what)
    changed = [path for path, text in files.items() if host.write(path, text)]
    if changed and any_loaded(host, list(dict.fromkeys(map(owner, changed)))):
        host.run(["systemctl", "daemon-reload"])
    return changed


def ensure_units(host: Host, site: Site, redis_config_changed: bool = False) -> list[str]:
    """Write a site's unit files (verified) and reload systemd; return changed units.
    Redis is restarted here, once, if its unit or its config changed; live app
    instances are the caller's (instances.refresh moves them to fresh instances
    without a dropped request)."""
    files = render_units(host, site)
    paths = {u: host.paths.unit(u) for u in files}
    # A door's service is verified with its instance's drop-ins (ensure_dropins):
    # its socket has no port of its own before.
    door = units.door_service(units.door_template(site.name))
    services = [u for u in files if u.endswith(".service") and u != door]
    written = write_units(host, {paths[u]: text for u, text in files.items()}, services,
                          "systemd units")
    changed = [u for u in files if paths[u] in written]
    remove_legacy_units(host, site)
    slice_ = units.slice_name(site.name)
    if slice_ in changed and is_active(host, slice_):
        # daemon-reload does not re-apply a running slice's cgroup settings.
        host.run(["systemctl", "set-property", "--runtime", slice_, *limit_properties(site)])
    redis = units.redis_unit(site.name)
    if (redis in changed or redis_config_changed) and is_active(host, redis):
        host.run(["systemctl", "restart", redis])
    return changed


def any_loaded(host: Host, names: list[str]) -> bool:
    """Whether the manager has any of these units (or an instance of one
    that is a template) loaded, even as not-found. If not, their new files
    need no daemon-reload, which costs most of a new site's add-site on a
    host of hundreds (0.8 s at 200 sites): systemd loads a unit it has not
    met from disk when it is first named, its unit directories' times telling
    it that the files changed (systemd 252 of Debian 12 and later)."""
    patterns = [n.replace("@.", "@*.") for n in names]
    return bool(host.query(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                            "--no-pager", "--", *patterns], ok=range(256)).out.strip())


def remove_legacy_units(host: Host, site: Site) -> None:
    """Stop and delete NAME-COMPONENT.service units of the pre-template layout."""
    for c in site.components:
        unit = units.legacy_unit(site.name, c)
        if host.paths.unit(unit).exists():
            host.run(["systemctl", "disable", "--now", unit])
            host.remove(host.paths.unit(unit))


def wait_unloaded(host: Host, unit: str, timeout: float = 10) -> None:
    """Return once a transient unit that just finished is gone: `systemd-run
    --wait --collect` can return before systemd unloads it, and a second
    systemd-run of the same name then fails ("already loaded"). One still
    loaded after timeout (seen on a host under heavy load: left failed, or
    still stopping) is stopped and its failure reset, so it can go."""
    deadline = time.monotonic() + timeout
    reset = False
    while host.query(["systemctl", "show", "-p", "LoadState", "--value", unit],
                     ok=range(256)).out.strip() not in ("not-found", ""):
        if time.monotonic() > deadline:
            if reset:
                return  # systemd-run will say what is wrong with it
            reset, deadline = True, time.monotonic() + timeout
            with host.step(f"{unit} left loaded: stopped and reset"):
                host.run(["systemctl", "stop", unit])
                try:
                    host.run(["systemctl", "reset-failed", unit])
                except CommandError:  # it had not failed
                    pass
        time.sleep(0.1)


def ensure_started(host: Host, unit: str) -> None:
    """Enable unit at boot and start it now, if it is not already. systemctl
    enable reloads every unit file (half a second with many sites) unless told
    not to: only done when the unit's own files changed since the last
    reload (a run stopped between writing them and its daemon-reload)."""
    if not (is_enabled(host, unit) and is_active(host, unit)):
        stale = show(host, unit, "NeedDaemonReload").get("NeedDaemonReload") == "yes"
        host.run(["systemctl", *([] if stale else ["--no-reload"]), "enable", "--now", unit])


def search_path(release: Path) -> list[str]:
    """Where a start command's program is looked up: the release's own tools first."""
    return [str(release / ".venv/bin"), str(release / "node_modules/.bin"),
            "/usr/local/bin", "/usr/bin", "/bin"]


def resolve_command(release: Path, command: str) -> str:
    """command with its program made absolute (looked up like ExecSearchPath=,
    which `systemd-analyze verify` does not understand); error if missing."""
    if not release.is_dir():  # a dry run: the release was never exported
        return command
    argv = shlex.split(command)
    program = argv[0]
    if "/" in program:
        candidates = [release / program] if not program.startswith("/") else [Path(program)]
    else:
        candidates = [Path(d) / program for d in search_path(release)]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return shlex.join([str(path), *argv[1:]]).replace("'${PORT}'", "${PORT}") \
                .replace("'${HOST}'", "${HOST}")
    raise SiteopsError(f"start command {command!r}: {program} not found in the release or "
                       f"{':'.join(search_path(release)[2:])}")


def render_dropin(site: str, release_id: str, release: Path, command: str,
                  ports: dict[str, int], log: Path | None = None, sleeps: bool = False) -> str:
    """An instance's drop-in: its release, command, and the ports of its peers
    (FRONTEND_PORT, API_PORT: the instances started with it); a worker's also
    names its log file. sleeps: it stops once nothing needs it (its door)."""
    env = " ".join(f"{c.upper()}_PORT={p}" for c, p in ports.items())
    output = f"StandardOutput=append:{log}\nStandardError=append:{log}\n" if log else ""
    return render("systemd/release.conf", name=site, release_id=release_id, release=release,
                  search_path=":".join(search_path(release)), command=command, ports_env=env,
                  output=output, unit=f"[Unit]\n{UNNEEDED}\n" if sleeps else "")


def render_door_dropins(paths: Paths, site: str, unit: str, door_port: int,
                        wants: list[str]) -> dict[Path, str]:
    """The drop-ins of the door of instance unit: the port its socket holds;
    the instance its service wakes (and is bound to), and the workers it
    starts with it."""
    port = unit.rsplit("@", 1)[1].removesuffix(".service")
    socket = units.door(site, int(port))
    head = f"# Managed by siteops: the door of {unit}. Edits are overwritten.\n"
    return {
        paths.dropin(socket): f"{head}[Socket]\nListenStream=127.0.0.1:{door_port}\n",
        paths.dropin(units.door_service(socket)): (
            f"{head}[Unit]\nBindsTo={unit}\nAfter={unit}\n"
            + "".join(f"Wants={w}\n" for w in wants)),
    }


def render_job(host: Host, site: Site, job: str, spec: Job, release_id: str) -> dict[str, str]:
    """{unit: text} of a job's service (in release release_id) and timer."""
    name, tree = site.name, host.paths.of(site.name)
    release = tree.release(release_id)
    service, timer = units.job_units(name, job)
    return {
        service: render("systemd/job.service", name=name, job=job, env=tree.env,
                        wants=f"Wants={units.redis_unit(name)}\n"
                        if site.sleep_after is not None else "",
                        uploads=tree.uploads, log=tree.job_log(job),
                        release=release, release_id=release_id,
                        search_path=":".join(search_path(release)),
                        command=resolve_command(release, spec.command),
                        hardening=render("systemd/hardening.conf"),
                        socket_bind="\n".join(socket_bind(site))),
        timer: render("systemd/job.timer", name=name, job=job, schedule=spec.schedule),
    }


def job_files(host: Host, name: str) -> dict[str, Path]:
    """{job name: its timer file} of the site's jobs on disk."""
    suffix = ".timer"
    return {p.name[len(f"{name}-job-"):-len(suffix)]: p
            for p in sorted(host.paths.unit("").glob(f"{name}-job-*{suffix}"))}


def live_jobs(site: Site) -> dict[str, Job]:
    """{job: spec} the live release declares (none before the first deploy)."""
    record = site.releases.get(site.live.release) if site.live else None
    return record.jobs if record else {}


def render_jobs(host: Host, site: Site) -> dict[str, str]:
    """{unit: text} of the services and timers of the live release's jobs."""
    files: dict[str, str] = {}
    for job, spec in sorted(live_jobs(site).items()):
        assert site.live is not None  # live_jobs is empty before the first deploy
        files.update(render_job(host, site, job, spec, site.live.release))
    return files


def ensure_jobs(host: Host, site: Site) -> None:
    """The live release's jobs as timers (verified, enabled, started); the
    timers of jobs it does not declare stopped and removed."""
    name = site.name
    jobs = live_jobs(site)
    files = render_jobs(host, site)
    gone = [j for j in job_files(host, name) if j not in jobs]
    if not files and not gone:
        return
    with host.step(f"scheduled jobs of {name}: {', '.join(sorted(jobs)) or 'none'}"):
        for job in gone:
            service, timer = units.job_units(name, job)
            host.run(["systemctl", "disable", "--now", "--quiet", timer])
            for unit in (timer, service):
                host.remove(host.paths.unit(unit))
        if gone:
            host.run(["systemctl", "daemon-reload"])
        write_units(host, {host.paths.unit(u): text for u, text in files.items()}, list(files),
                    f"jobs of {name}")
        timers = [u for u in files if u.endswith(".timer")]
        if site.held:  # a move's copy, or its source after the freeze
            if any(is_enabled(host, t) or is_active(host, t) for t in timers):
                host.run(["systemctl", "disable", "--now", "--quiet", *timers])
        elif timers and not all(is_enabled(host, t) and is_active(host, t) for t in timers):
            host.run(["systemctl", "enable", "--now", "--quiet", *timers])


def job_results(host: Host, site: Site, shown: dict[str, dict[str, str]] | None = None
                ) -> dict[str, dict]:
    """{job: {schedule, running, last (start of its last run, or null),
    result ("success" | why it failed | null before its first run), timer
    (its ActiveState), next}} of the live release's jobs. shown: their units'
    properties (JOB_PROPS) already read, as audit reads every site's at once."""
    jobs = sorted(live_jobs(site).items())
    if shown is None:
        shown = show_many(host, job_units(site), *JOB_PROPS)
    out = {}
    for job, spec in jobs:
        service, timer = units.job_units(site.name, job)
        props, tprops = shown.get(service, {}), shown.get(timer, {})
        ran = props.get("ExecMainStartTimestamp") not in (None, "", "n/a")
        result = None
        if ran and props.get("ActiveState") != "activating":
            result = ("success" if props.get("Result") == "success" else
                      f"{props.get('Result')} (exit {props.get('ExecMainStatus')})")
        out[job] = {"schedule": spec.schedule, "running": props.get("ActiveState") == "activating",
                    "last": props.get("ExecMainStartTimestamp") if ran else None,
                    "result": result, "timer": tprops.get("ActiveState", "unknown"),
                    "next": tprops.get("NextElapseUSecRealtime") or None}
    return out


JOB_PROPS = ("Result", "ExecMainStatus", "ExecMainStartTimestamp", "ActiveState",
             "NextElapseUSecRealtime")


def job_units(site: Site) -> list[str]:
    """The service and timer of each of the live release's jobs."""
    return [u for job in sorted(live_jobs(site)) for u in units.job_units(site.name, job)]


def loaded(host: Host) -> dict[str, str]:
    """{unit: its ActiveState} of every unit the manager has loaded, from one
    `systemctl list-units` (one D-Bus call: `show` asks once per unit, a
    second for a thousand). A unit not loaded is inactive: a stopped unit
    nothing needs is let go, as a sleeping site's instances are."""
    out = host.query(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                      "--no-pager"], ok=range(256)).out
    return {f[0]: f[2] for f in (line.split(None, 4) for line in out.splitlines()) if len(f) >= 3}


def show(host: Host, unit: str, *props: str, unix_times: bool = False) -> dict[str, str]:
    """`systemctl show` properties of a unit (with unix_times, timestamps as
    @SECONDS)."""
    return show_many(host, [unit], *props, unix_times=unix_times).get(unit, {})


def show_many(host: Host, names: list[str], *props: str, unix_times: bool = False
              ) -> dict[str, dict[str, str]]:
    """show()'s properties of many units from one `systemctl show` (its
    output: a block for each unit, in order, a blank line between two)."""
    if not names:
        return {}
    argv = ["systemctl", "show", *(["--timestamp=unix"] if unix_times else [])]
    for prop in props:
        argv += ["-p", prop]
    blocks: list[dict[str, str]] = [{}]
    for line in host.query([*argv, "--", *names], ok=range(256)).out.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key in blocks[-1]:  # a blank line: the next unit's block
            blocks.append({})
        if sep:
            blocks[-1][key] = value
    blocks = [b for b in blocks if b] or [{}]
    return dict(zip(names, blocks))


def in_slice(site: str, argv: list) -> list:
    """argv run as a scope in the site's slice: its CPU, IO and memory count
    against the site's limits, and under the site's memory limit it is killed
    before the site's own processes are (oom_score_adj 500)."""
    return ["systemd-run", "--scope", "--quiet", "--collect", f"--slice={units.slice_name(site)}",
            "--", "choom", "-n", "500", "--", *argv]


def sandbox_argv(host: Host, entry: Site, workdir: Path, command: str, unit: str,
                 writable: tuple[Path, ...] = ()) -> list[str]:
    """systemd-run argv that runs a shell command in workdir as the site user with
    the services' hardening, in the site's slice (its limits), binding only its
    ports; only workdir, the site's build cache and `writable` are writable."""
    site = entry.name
    cache = host.paths.of(site).cache
    props = [line.strip() for line in render("systemd/hardening.conf").splitlines()
             if "=" in line and not line.startswith("#")]
    props += socket_bind(entry)
    props += [f"User={site}", f"Group={site}", f"Slice={units.slice_name(site)}",
              f"WorkingDirectory={workdir}",
              "ReadWritePaths=" + " ".join(map(str, (workdir, cache, *writable))),
              f"EnvironmentFile={host.paths.of(site).env}"]
    env = {"HOME": cache, "XDG_CACHE_HOME": cache, "NODE_ENV": "production",
           "npm_config_cache": cache / "npm", "CI": "true",
           "PATH": ":".join(search_path(workdir))}
    argv = ["systemd-run", "--quiet", "--wait", "--pipe", "--collect", f"--unit={unit}",
            "--property=TimeoutStopSec=10s"]
    argv += [f"--property={p}" for p in props]
    argv += [f"--setenv={k}={v}" for k, v in env.items()]
    return argv + ["--", "/bin/sh", "-c", command]


TIMERS = {"audit": "hourly audit timer", "backup": "daily backup timer",
          "verify": "weekly backup verification timer",
          "usage": "usage export timer (every minute, for node_exporter)"}


def timer_units(job: str) -> tuple[str, str]:
    return f"siteops-{job}.service", f"siteops-{job}.timer"


def ensure_timer(host: Host, job: str) -> None:
    """A siteops job (audit, backup, usage): a oneshot service and its timer, enabled."""
    service, timer = timer_units(job)
    with host.step(TIMERS[job]):
        write_units(host, {host.paths.unit(u): render(f"systemd/{u}",
                                                      bin=host.paths.install_dir / "bin")
                           for u in (service, timer)}, [service, timer], TIMERS[job])
        if not (is_enabled(host, timer) and is_active(host, timer)):
            host.run(["systemctl", "enable", "--now", timer])


def site_unit_files(host: Host, name: str) -> list[Path]:
    """Every unit file, drop-in directory and enablement link of the site's
    (NAME-*: site names have no '-'), and its slice."""
    unit_dir = host.paths.unit("")
    found = sorted(unit_dir.glob(f"{name}-*")) + sorted(unit_dir.glob(f"*.wants/{name}-*"))
    return found + [host.paths.unit(units.slice_name(name))]


def remove_site_units(host: Host, name: str) -> None:
    """Stop everything in the site's slice (instances, Redis, a build), then
    delete its unit files, drop-ins and enablement links."""
    slice_ = units.slice_name(name)
    with host.step(f"units of {name} stopped and removed"):
        files = [p for p in site_unit_files(host, name) if p.exists() or p.is_symlink()]
        if is_active(host, slice_) or files:
            host.run(["systemctl", "stop", slice_])
        for path in files:
            if path.is_dir() and not path.is_symlink():
                host.remove_tree(path)
            else:
                host.remove(path)
        if files:
            host.run(["systemctl", "daemon-reload"])
            host.run(["systemctl", "reset-failed"], timeout=60)
