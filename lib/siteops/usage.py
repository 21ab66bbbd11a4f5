"""What each site uses: its slice's cgroup accounting (memory, CPU, tasks,
IO), its disk, database and Redis, and its traffic from its nginx access log.

Everything is read from files (cgroup v2, the access log) and one `du` and
one psql query for all sites, so a run over 89 sites takes well under a
second of work; `du` results are kept DISK_MAX_AGE seconds, since a tree
with node_modules has many files.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from . import postgres, safefs, systemd, units
from .errors import CommandError
from .logfiles import backwards
from .model import Site
from .host import Host

DISK_MAX_AGE = 900
# audit warns at these (also documented in the README)
MEMORY_WARN = 0.90      # memory now / its limit
ERROR_RATE_WARN = 0.05  # 5xx / requests over the window
ERROR_MIN_REQUESTS = 20  # fewer requests than this are no rate

_LINE = re.compile(rb'" (\d{3}) \d+ "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*" '
                   rb'rt=([\d.]+) urt="([^"]*)" t=([\d.]+)$')


def cgroup_dir(host: Host, name: str) -> Path:
    return host.paths.cgroup(units.slice_name(name))


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() else None


def _keyed(text: str | None, key: str) -> int | None:
    """`key N` of a flat-keyed cgroup file (cpu.stat)."""
    for line in (text or "").splitlines():
        k, _, v = line.partition(" ")
        if k == key and v.strip().isdigit():
            return int(v)
    return None


def _io(text: str | None) -> tuple[int | None, int | None]:
    """Bytes read and written, summed over the devices of io.stat."""
    if text is None:
        return None, None
    read = sum(int(m) for m in re.findall(r"\brbytes=(\d+)", text))
    written = sum(int(m) for m in re.findall(r"\bwbytes=(\d+)", text))
    return read, written


def cgroup(host: Host, name: str) -> dict:
    """The slice's accounting now (None where the kernel keeps no such file:
    memory.peak is Linux 5.19+, and a stopped slice has no directory)."""
    d = cgroup_dir(host, name)
    read, written = _io(_read(d / "io.stat"))
    redis = cgroup_dir(host, name) / units.redis_unit(name)
    limit = (_read(d / "memory.max") or "").strip()
    return {
        "memory_bytes": _int(_read(d / "memory.current")),
        "memory_peak_bytes": _int(_read(d / "memory.peak")),
        "memory_max_bytes": int(limit) if limit.isdigit() else None,
        "cpu_usec": _keyed(_read(d / "cpu.stat"), "usage_usec"),
        "tasks": _int(_read(d / "pids.current")),
        "tasks_max": _int(_read(d / "pids.max")),
        "io_read_bytes": read, "io_write_bytes": written,
        "redis_memory_bytes": _int(_read(redis / "memory.current")),
    }


def units_memory(host: Host, names: list[str]) -> int | None:
    """Bytes the units (names) use now: their cgroups' memory.current, or where the kernel
    keeps none (cgroup v1, as in a container on an older host), the resident
    memory of their processes; None if neither can be read."""
    groups = host.query(["systemctl", "show", "-p", "ControlGroup", "--value", "--", *names],
                        ok=range(256)).out.split()
    total, found = 0, False
    root = host.paths.cgroup_root
    for group in groups:
        used = _int(_read(root / group.lstrip("/") / "memory.current"))
        if used is None:  # cgroup v1 (hybrid): the processes are listed in systemd's hierarchy
            pids = next((text.split() for d in ("", "unified", "systemd")
                         if (text := _read(root / d / group.lstrip("/") / "cgroup.procs"))), [])
            rss = [re.search(r"^VmRSS:\s+(\d+) kB", _read(host.paths.p(f"/proc/{pid}/status"))
                             or "", re.M) for pid in pids]
            used = 1024 * sum(int(m.group(1)) for m in rss if m) if any(rss) else None
        found = found or used is not None
        total += used or 0
    return total if found else None


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def traffic(host: Host, name: str, window: float, now: float) -> dict:
    """Requests in the last `window` seconds of the site's access log: counts
    by status class, 429s, and p50/p99 of the upstream's time in ms."""
    out: dict[str, Any] = {"requests": 0, "status_2xx": 0, "status_3xx": 0, "status_4xx": 0,
                           "status_5xx": 0, "status_429": 0, "upstream_p50_ms": None,
                           "upstream_p99_ms": None}
    fh = safefs.open_read(host.paths.of(name).nginx_access_log)
    if fh is None:
        return out
    times = []
    with fh:
        for line in backwards(fh):
            m = _LINE.search(line)
            if not m:
                continue
            if float(m.group(4)) < now - window:
                break
            status = int(m.group(1))
            out["requests"] += 1
            out[f"status_{status // 100}xx"] = out.get(f"status_{status // 100}xx", 0) + 1
            if status == 429:
                out["status_429"] += 1
            upstream = m.group(3).split(b",")[-1].strip()
            if re.fullmatch(rb"[\d.]+", upstream):
                times.append(float(upstream) * 1000)
    out["upstream_p50_ms"] = percentile(times, 50)
    out["upstream_p99_ms"] = percentile(times, 99)
    return out


def du(host: Host, paths: list[Path]) -> dict[str, int]:
    """Bytes used under each path, from one `du`."""
    existing = [str(p) for p in paths if p.exists()]
    if not existing:
        return {}
    out = host.query(["du", "-s", "-x", "-B1", "--", *existing], ok=range(256)).out
    return {line.split("\t", 1)[1]: int(line.split("\t", 1)[0])
            for line in out.splitlines() if "\t" in line}


def disk(host: Host, sites: list[Site], max_age: float = DISK_MAX_AGE) -> dict[str, int]:
    """Bytes under each site's tree, from a `du` at most max_age seconds old."""
    cache_path = host.paths.state / "usage-disk.json"
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if time.time() - cache.get("at", 0) > max_age or \
            any(str(host.paths.site(s.name)) not in cache.get("bytes", {}) for s in sites):
        cache = {"at": time.time(),
                 "bytes": du(host, [host.paths.site(s.name) for s in sites])}
        if not host.dry_run and cache_path.parent.is_dir():
            safefs.write(cache_path, json.dumps(cache).encode(), 0o600)
    return {s.name: cache["bytes"].get(str(host.paths.site(s.name))) for s in sites}


def databases(host: Host) -> dict[str, int]:
    """Bytes of every database, from one query."""
    try:
        out = postgres.psql(host, "SELECT datname || ' ' || pg_database_size(datname) "
                                  "FROM pg_database WHERE datallowconn")
    except (CommandError, OSError):
        return {}
    return {n: int(b) for n, b in (line.split(" ") for line in out.splitlines() if " " in line)}


def collect(host: Host, sites: list[Site], interval: float = 1.0, window: float = 300,
            with_sizes: bool = True, clock=time.time, sleep=time.sleep) -> list[dict]:
    """One row per site: accounting, CPU share over `interval` seconds (none
    when 0), disk and database sizes (unless with_sizes is false: audit's
    checks need neither, so it saves the du and the query), Redis and
    traffic over `window` seconds."""
    before = {s.name: cgroup(host, s.name) for s in sites}
    if interval > 0:
        sleep(interval)
    now = clock()
    sizes = disk(host, sites) if with_sizes else {}
    dbs = databases(host) if with_sizes else {}
    web = [u for s in sites if s.sleep_after is not None for u in units.live_web(s)]
    if web:  # a unit not loaded has no time to show: asked only of the loaded ones
        active = systemd.loaded(host)
        web = [u for u in web if u in active]
    shown = systemd.show_many(host, web, *SLEEP_PROPS, unix_times=True)
    rows = []
    for s in sites:
        cg = cgroup(host, s.name) if interval > 0 else before[s.name]
        share = None
        if interval > 0 and cg["cpu_usec"] is not None and before[s.name]["cpu_usec"] is not None:
            share = round((cg["cpu_usec"] - before[s.name]["cpu_usec"]) / (interval * 1e4), 1)
        rows.append({"name": s.name, **cg, "cpu_percent": share,
                     "limits": systemd.limits(s), "disk_bytes": sizes.get(s.name),
                     "database_bytes": dbs.get(s.database),
                     "window_seconds": window, **traffic(host, s.name, window, now),
                     "sleep": sleep_state(host, s, now, shown)})
    return rows


SLEEP_PROPS = ("ActiveState", "ActiveEnterTimestamp", "InactiveEnterTimestamp")


def sleep_state(host: Host, site: Site, now: float | None = None,
                shown: dict[str, dict[str, str]] | None = None) -> dict | None:
    """A sleeping site's state, read without waking it: asleep or awake, since
    when (its web instances' last start or stop), its last request (the
    access log's last line) and its wakes today (the door's log); None for a
    site that never sleeps. shown: its web instances' SLEEP_PROPS already
    read (collect reads every site's in one call)."""
    if site.sleep_after is None:
        return None
    web = units.live_web(site)
    if shown is None:
        shown = systemd.show_many(host, web, *SLEEP_PROPS, unix_times=True)
    props = [shown.get(u, {}) for u in web]
    awake = any(p.get("ActiveState") in ("active", "activating") for p in props)
    stamps = [p.get("ActiveEnterTimestamp" if awake else "InactiveEnterTimestamp", "")
              for p in props]
    since = max((float(s[1:]) for s in stamps if s.startswith("@")), default=None)
    files = host.paths.of(site.name)
    today = time.strftime("%Y-%m-%d", time.localtime(now))
    wakes = 0
    fh = safefs.open_read(files.door_log)
    if fh is not None:
        with fh:
            wakes = sum(1 for line in fh.read().decode(errors="replace").splitlines()
                        if line.startswith(today) and " wake: " in line)
    return {"sleep_after": site.sleep_after, "state": "awake" if awake else "asleep",
            "since": stamp(since), "last_request": stamp(last_request(host, site.name)),
            "wakes_today": wakes}


def last_request(host: Host, name: str) -> float | None:
    """When the site's access log says its last request came (t=<epoch>)."""
    fh = safefs.open_read(host.paths.of(name).nginx_access_log)
    if fh is None:
        return None
    with fh:
        for block in backwards(fh):
            for line in reversed(block.decode(errors="replace").splitlines()):
                _, sep, value = line.rpartition(" t=")
                try:
                    return float(value) if sep else None
                except ValueError:
                    return None
    return None


def stamp(epoch: float | None) -> str | None:
    return None if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def near_memory_limit(row: dict) -> bool:
    m, top = row.get("memory_bytes"), row.get("memory_max_bytes")
    return bool(m and top and m >= MEMORY_WARN * top)


def error_rate(row: dict) -> float | None:
    """5xx / requests over the window, or None with too few requests."""
    n = row.get("requests") or 0
    return row["status_5xx"] / n if n >= ERROR_MIN_REQUESTS else None


# -- Prometheus text format -----------------------------------------------------

METRICS = [  # (name, type, help, row key, scale)
    ("siteops_site_memory_bytes", "gauge", "Memory of the site's slice now.", "memory_bytes", 1),
    ("siteops_site_memory_peak_bytes", "gauge", "Peak memory of the site's slice.",
     "memory_peak_bytes", 1),
    ("siteops_site_memory_max_bytes", "gauge", "The site's memory limit.", "memory_max_bytes", 1),
    ("siteops_site_cpu_seconds_total", "counter", "CPU time of the site's slice.", "cpu_usec",
     1e-6),
    ("siteops_site_tasks", "gauge", "Processes and threads of the site.", "tasks", 1),
    ("siteops_site_io_read_bytes_total", "counter", "Bytes the site read from disk.",
     "io_read_bytes", 1),
    ("siteops_site_io_write_bytes_total", "counter", "Bytes the site wrote to disk.",
     "io_write_bytes", 1),
    ("siteops_site_disk_bytes", "gauge", "Bytes under the site's tree.", "disk_bytes", 1),
    ("siteops_site_database_bytes", "gauge", "Size of the site's database.", "database_bytes", 1),
    ("siteops_site_redis_memory_bytes", "gauge", "Memory of the site's Redis.",
     "redis_memory_bytes", 1),
    ("siteops_site_upstream_p99_seconds", "gauge",
     "99th percentile upstream time over the window.", "upstream_p99_ms", 1e-3),
]


def prometheus(rows: list[dict]) -> str:
    """The rows in the Prometheus text exposition format."""
    lines = []
    for metric, kind, text, key, scale in METRICS:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{site="{r["name"]}"}} {r[key] * scale:g}'
                  for r in rows if r.get(key) is not None]
    lines += ["# HELP siteops_site_asleep 1 if the site sleeps now (it sleeps when idle).",
              "# TYPE siteops_site_asleep gauge"]
    lines += [f'siteops_site_asleep{{site="{r["name"]}"}} {int(r["sleep"]["state"] == "asleep")}'
              for r in rows if r.get("sleep")]
    lines += ["# HELP siteops_site_wakes_today Times a request woke the site today.",
              "# TYPE siteops_site_wakes_today gauge"]
    lines += [f'siteops_site_wakes_today{{site="{r["name"]}"}} {r["sleep"]["wakes_today"]}'
              for r in rows if r.get("sleep")]
    lines += ["# HELP siteops_site_requests Requests over the last window, by status class.",
              "# TYPE siteops_site_requests gauge"]
    for r in rows:
        for status in ("2xx", "3xx", "4xx", "5xx", "429"):
            lines.append(f'siteops_site_requests{{site="{r["name"]}",status="{status}",'
                         f'window="{r["window_seconds"]:g}s"}} {r[f"status_{status}"]}')
    return "\n".join(lines) + "\n"
