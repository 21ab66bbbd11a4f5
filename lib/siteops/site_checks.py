"""audit's checks of one site: pure functions from the host's facts and the
site's (facts.gather) to findings (checks.py: the findings and the host's)."""

from __future__ import annotations

import datetime

from . import access, drains, layout, releases, units, usage
from .checks import (BACKUP_CRIT_HOURS, BACKUP_WARN_HOURS, CRITICAL, LOOPBACK, MAX_EXPOSURE, OK,
                     TLS_CRIT_DAYS, TLS_WARN_DAYS, VERIFY_WARN_DAYS, WARNING, Finding, _f, drift)
from .facts import Facts, SiteFacts
from .model import Site
from .host import Host
from .journal import ISO, hours_between


def site_checks(host: Host, site: Site, facts: Facts) -> list[Finding]:
    name = site.name
    sf = facts["sites"][name]
    out = [user_check(site, sf)]
    out += tree_checks(host, site, sf)
    out += drift_checks(site, sf)
    out.append(parts_check(site, sf))
    out += unit_checks(site, facts)
    out.append(listen_check(site, facts))
    out.append(ports_check(site, facts))
    out += release_checks(site, sf)
    out += job_checks(site, sf)
    out += usage_checks(site, facts.get("usage", {}).get(name))
    out += tls_checks(site, sf, facts["time"])
    out.append(database_check(site, facts))
    out.append(urls_check(site, sf))
    out.append(access_check(site, facts["access"], facts["time"]))
    m = site.maintenance
    out.append(_f(f"site.{name}.maintenance", m is None, name, "serving (not in maintenance)",
                  f"in maintenance since {m and m.since} ({m and m.by}): visitors get a 503",
                  WARNING, remedy=f"sudo maintenance {name} off, once the work is done"))
    out.append(move_check(site))
    if site.drains:
        out.append(drain_check(site, facts["drains_failing"]))
    if not facts["backup"]["error"]:
        out.append(backup_check(site, facts))
        out.append(verified_check(site, facts))
    du = facts["du"].get(str(host.paths.site(name)))
    if du is not None:
        out.append(Finding(f"site.{name}.disk", OK, name, f"uses {du / 2**20:.1f} MiB"))
    return out


def drain_check(site: Site, failing: dict[str, dict]) -> Finding:
    """A drain that has delivered nothing for an hour while records waited."""
    name = site.name
    down = [(d.url, failing[drains.drain_id(name, d.url)]) for d in site.drains
            if drains.drain_id(name, d.url) in failing]
    return _f(f"site.{name}.drains", not down, name,
              f"ships its logs to {len(site.drains)} collector(s)",
              "; ".join(f"drain {url} has delivered nothing for {drains.FAILING_AFTER // 60} min "
                        f"while {f['waiting']} records wait" for url, f in down),
              WARNING, remedy="is the collector up, and does its certificate name its host and "
                              "chain to the drain's CA? rsyslog says why: journalctl -t rsyslogd")


def move_check(site: Site) -> Finding:
    """A move-site in progress: on the source (its stage), or the copy on
    the target, whose workers and timers are held until the move forwards."""
    name, move = site.name, site.move
    if move:
        bad = (f"moving to {move.to} since {move.started}: {move.stage}"
               + (" (this host forwards its visitors there)" if move.stage == "forwarding"
                  else ""))
        remedy = (f"move DNS to {move.address}, then sudo move-site {name} --finish"
                  if move.stage == "forwarding" else
                  f"sudo move-site {name} --to {move.to} (resumes) or --abort")
    else:
        bad = "workers and timers held: a move's copy not yet serving"
        remedy = f"sudo move-site {name} --to THIS-HOST on the source resumes the move"
    return _f(f"site.{name}.move", not move and not site.held, name, "not being moved",
              bad, WARNING, remedy=remedy)


def user_check(site: Site, sf: SiteFacts) -> Finding:
    name, u = site.name, sf["user"]
    problems = []
    if u is None:
        problems.append("the Unix user is missing")
    else:
        if site.uid is not None and u["uid"] != site.uid:
            problems.append(f"UID {u['uid']} (registry: {site.uid})")
        if not u["shell"].endswith("nologin"):
            problems.append(f"shell {u['shell']}")
        if not u["home"].endswith(f"/sites/{name}"):
            problems.append(f"home {u['home']}")
    return _f(f"site.{name}.user", not problems, name, "Unix user matches the registry",
              "Unix user: " + "; ".join(problems),
              remedy=f"usermod -s /usr/sbin/nologin {name} (a changed UID needs a human)")


def _ids(sf: SiteFacts, owner: str, group: str) -> tuple[int, int] | None:
    """UID and GID for a tree entry's owner and group (root or the site user)."""
    u = sf["user"]
    if u is None:
        return None
    return (0 if owner == "root" else u["uid"]), (0 if group == "root" else u["gid"])


def tree_checks(host: Host, site: Site, sf: SiteFacts) -> list[Finding]:
    name = site.name
    wrong = []
    for path, mode, owner, group in layout.tree(host, name):
        st, ids = sf["tree"].get(str(path)), _ids(sf, owner, group)
        if st is None or not st["dir"]:
            wrong.append(f"{path} missing")
        elif ids and (st["mode"], st["uid"], st["gid"]) != (mode, *ids):
            wrong.append(f"{path} {st['mode']:04o} (want {mode:04o} {owner}:{group})")
    env, ids = sf["env"], _ids(sf, name, name)
    env_ok = env is not None and ids is not None and (env["mode"], env["uid"], env["gid"]) == (0o600, *ids)
    return [
        _f(f"site.{name}.tree", not wrong, name, "directory owners and modes as designed",
           "; ".join(wrong), WARNING, remedy="audit --fix", fix="tree"),
        _f(f"site.{name}.env", env_ok, name, ".env is 0600 and the site's own",
           ".env is missing" if env is None else
           f".env is {env['mode']:04o} uid {env['uid']} (want 0600 {name}:{name})",
           remedy="audit --fix", fix="env"),
    ]


def drift_checks(site: Site, sf: SiteFacts) -> list[Finding]:
    return drift(f"site.{site.name}.file", site.name, sf["expected"], sf["actual"], sf["secrets"],
                 "audit --fix re-renders it (nginx -t first)", "render")


def parts_check(site: Site, sf: SiteFacts) -> Finding:
    """Every part parts.py declares for the site is there (nginx's enabled
    link included, which the drift check does not read)."""
    gone = sf["missing_parts"]
    return _f(f"site.{site.name}.parts", not gone, site.name,
              "every file siteops generates for it is there",
              "missing: " + ", ".join(gone), remedy="audit --fix renders them again",
              fix="render")


def unit_checks(site: Site, facts: Facts) -> list[Finding]:
    out = []
    sleepers = units.asleep_allowed(site)
    doors = units.live_door_units(site)
    for unit in units.live_units(site):
        st = facts["units"].get(unit, {})
        state = st.get("active", "?")
        if unit in sleepers:  # a sleeping site's: asleep or awake, never failed
            out.append(_f(f"site.{site.name}.unit:{unit}", state != "failed", site.name,
                          f"{unit} {'awake' if state == 'active' else 'asleep'}",
                          f"{unit} failed", remedy=f"logs {site.name}; journalctl -u {unit}",
                          fix="unit"))
        elif unit in doors and unit.endswith(".service"):
            out.append(_f(f"site.{site.name}.door:{unit}", state != "failed", site.name,
                          f"{unit} {'open' if state == 'active' else 'waiting'}",
                          f"{unit} failed: the release did not answer when a request woke it "
                          "(those requests got 502)",
                          remedy=f"logs {site.name} (door and the app's errors); the next "
                                 "request tries again; audit --fix clears the failure",
                          fix="unit"))
            continue
        else:
            ok = state == "active" and st.get("enabled") == "enabled"
            out.append(_f(f"site.{site.name}.unit:{unit}", ok, site.name,
                          f"{unit} enabled and active",
                          f"{unit} is {state} and {st.get('enabled') or 'not enabled'}",
                          remedy=f"audit --fix starts it; journalctl -u {unit}", fix="unit"))
        score = facts["exposure"].get(unit)
        if score is not None:
            out.append(_f(f"site.{site.name}.exposure:{unit}", score <= MAX_EXPOSURE,
                          site.name, f"{unit} exposure {score}",
                          f"{unit} exposure {score} (over {MAX_EXPOSURE})", WARNING,
                          remedy=f"systemd-analyze security {unit}; audit --fix restores "
                                 "the generated unit", fix="render"))
    return out


def job_checks(site: Site, sf: SiteFacts) -> list[Finding]:
    """Each scheduled job's timer runs, and its last run succeeded."""
    out = []
    for job, j in sf.get("jobs", {}).items():
        service, timer = units.job_units(site.name, job)
        if j["timer"] != "active" and not site.held:
            problem = f"job {job}: its timer {timer} is {j['timer']}"
        elif j["result"] not in (None, "success"):
            problem = f"job {job}: its last run ({j['last']}) failed: {j['result']}"
        else:
            problem = None
        out.append(_f(f"site.{site.name}.job:{job}", problem is None, site.name,
                      f"job {job} ({j['schedule']}): last run "
                      f"{j['result'] or 'not yet'}", problem or "", WARNING,
                      remedy=f"logs {site.name} {job}; journalctl -u {service}"))
    return out


def usage_checks(site: Site, row: dict | None) -> list[Finding]:
    """The site is not at its memory limit, and its 5xx rate over the last
    window is low (thresholds in usage.py and the README)."""
    if row is None:
        return []
    name, out = site.name, []
    if row.get("memory_bytes") is not None and row.get("memory_max_bytes"):
        pct = 100 * row["memory_bytes"] / row["memory_max_bytes"]
        out.append(_f(f"site.{name}.memory", not usage.near_memory_limit(row), name,
                      f"memory {pct:.0f}% of its limit",
                      f"memory at {pct:.0f}% of its limit ({row['memory_bytes'] // 2**20} of "
                      f"{row['memory_max_bytes'] // 2**20} MiB): the kernel reclaims, then "
                      "kills the site's own processes", WARNING,
                      remedy=f"sites usage {name}; limits {name} --memory-max SIZE"))
    rate = usage.error_rate(row)
    if rate is not None:
        out.append(_f(f"site.{name}.errors", rate <= usage.ERROR_RATE_WARN, name,
                      f"{100 * rate:.1f}% 5xx over the last {row['window_seconds']:g} s",
                      f"{100 * rate:.1f}% of {row['requests']} requests answered 5xx over the "
                      f"last {row['window_seconds']:g} s", WARNING,
                      remedy=f"logs {name} nginx; logs {name} web"))
    return out


def access_check(site: Site, af: dict, now: str) -> Finding:
    """The site's tenant keys, each with its role and last use; a warning for
    a key unused (since it was added) for access.UNUSED_DAYS."""
    def unused_days(key) -> float:
        when = af["last_used"].get(key.fingerprint) or key.added
        return hours_between(when, now) / 24 if when else 0
    stale = [k for k in site.keys if unused_days(k) > access.UNUSED_DAYS]
    listed = ", ".join(f"{k.label or k.fingerprint} ({k.role}, last used "
                       f"{(af['last_used'].get(k.fingerprint) or 'never')[:10]})"
                       for k in site.keys) or "none"
    return _f(f"site.{site.name}.access", not stale, site.name, f"tenant keys: {listed}",
              f"tenant key(s) unused for {access.UNUSED_DAYS} days: "
              + ", ".join(f"{k.label or '-'} {k.fingerprint}" for k in stale), WARNING,
              remedy=f"access {site.name} remove FINGERPRINT if it is no longer needed")


def backup_check(site: Site, facts: Facts) -> Finding:
    """The site's newest snapshot is recent (a new site has a day to get its first)."""
    name, last = site.name, facts["backup"]["latest"].get(site.name)
    since = last or site.created
    try:
        hours = hours_between(since or "", facts["time"])
    except ValueError:
        hours = float("inf")
    if last is None and hours < BACKUP_WARN_HOURS:
        return Finding(f"site.{name}.backup", OK, name,
                       "no backup yet (the daily timer makes the first)")
    what = f"last backup {hours:.0f} h ago" if last else "never backed up"
    return _f(f"site.{name}.backup", hours < BACKUP_WARN_HOURS, name, what, what,
              CRITICAL if hours >= BACKUP_CRIT_HOURS else WARNING,
              remedy=f"sudo backup {name}; check `systemctl status siteops-backup`")


def verified_check(site: Site, facts: Facts) -> Finding:
    """The site's backups were proven to restore (backup --verify) within
    VERIFY_WARN_DAYS, and the last proof passed (a new site gets that long)."""
    name, result = site.name, facts["backup"].get("verified", {}).get(site.name)
    remedy = f"sudo backup --verify {name}"
    if result and not result["ok"]:
        return Finding(f"site.{name}.backup_verified", WARNING, name,
                       f"its last backup verification ({result['time']}) failed: "
                       f"{result['error']}", remedy)
    since = result["time"] if result else site.created
    try:
        days = hours_between(since or "", facts["time"]) / 24
    except ValueError:
        days = float("inf")
    good = (f"backups verified {days:.0f} day(s) ago (snapshot {result['snapshot']})"
            if result else "not verified yet (the weekly timer does it)")
    bad = (f"backups last verified {days:.0f} days ago" if result
           else "backups never verified")
    return _f(f"site.{name}.backup_verified", days < VERIFY_WARN_DAYS, name, good, bad,
              WARNING, remedy=remedy)


def own_unit(name: str, unit: str) -> bool:
    """True if unit is one of site name's (NAME-*: site names have no '-'), or its build."""
    return unit.startswith(f"{name}-") or unit == f"siteops-build-{name}.service"


def door_holder(listener: dict, unit: str, doors: set[int]) -> bool:
    """True if unit is systemd itself holding one of the site's door ports."""
    return unit == "init.scope" and listener["port"] in doors


def ports_check(site: Site, facts: Facts) -> Finding:
    """Nothing but the site's own units listens on its ports."""
    name = site.name
    own = set(units.block_ports(site.slot))
    doors = set((units.upstream_ports(site) or {}).values()) if site.live and site.live.doors \
        else set()
    foreign = sorted({f"{l['port']} held by {'/'.join(l['units']) or 'a process outside any unit'}"
                      f" ({'/'.join(l['programs']) or '?'})"
                      for l in facts["listeners"] if l["port"] in own
                      and not (l["units"] and all(own_unit(name, u) or door_holder(l, u, doors)
                                                  for u in l["units"]))})
    return _f(f"site.{name}.ports", not foreign, name,
              "only its own units listen on its ports",
              "another process listens on its ports: " + ", ".join(foreign),
              remedy="stop that unit or process (`ss -ltnp`); nginx sends the site's "
                     "visitors to whatever holds its ports")


def listen_check(site: Site, facts: Facts) -> Finding:
    """The site's processes (its units are NAME-*: site names have no '-')."""
    name = site.name
    own = set(units.block_ports(site.slot))
    bad = []
    for l in facts["listeners"]:
        if not any(own_unit(name, u) for u in l["units"]):
            continue
        if l["addr"] not in LOOPBACK:
            bad.append(f"{l['addr']}:{l['port']}")
        elif l["port"] not in own:
            bad.append(f"port {l['port']} (not in its blocks)")
    return _f(f"site.{name}.listen", not bad, name,
              "its processes listen on 127.0.0.1 and its own ports only",
              "its processes listen on " + ", ".join(sorted(set(bad))),
              remedy="make the app bind HOST:PORT from its environment")


def release_checks(site: Site, sf: SiteFacts) -> list[Finding]:
    name, live = site.name, releases.live_id(site)
    if live is None:
        return [Finding(f"site.{name}.current", OK, name, "not deployed yet")]
    cur = sf["current"]
    ok = cur is not None and bool(cur.get("target_exists")) and cur.get("link") == f"releases/{live}"
    keep = site.keep
    n = len(sf["releases"])
    return [
        _f(f"site.{name}.current", ok, name, f"current -> releases/{live}",
           "current is missing" if cur is None else
           f"current -> {cur.get('link')} ({'dangling' if not cur.get('target_exists') else 'not the live release ' + live})",
           remedy="audit --fix points it at the live release", fix="current"),
        _f(f"site.{name}.releases", n <= keep + 2, name, f"{n} release(s) on disk",
           f"{n} releases on disk (keep is {keep})", WARNING,
           remedy="the next deploy prunes them"),
    ]


def tls_checks(site: Site, sf: SiteFacts, now: str) -> list[Finding]:
    name, tls = site.name, sf["tls"]
    if tls is None:
        return []
    try:
        end = datetime.datetime.strptime(tls["not_after"] or "", ISO)
        days = (end - datetime.datetime.strptime(now, ISO)).days
    except ValueError:
        return [Finding(f"site.{name}.tls", CRITICAL, name, "cannot read the certificate's "
                        "expiry date", "openssl x509 -noout -enddate -in fullchain.pem")]
    served = tls.get("served_sha256")
    renewal = [] if "renewal" not in tls else [renewal_check(site, tls["renewal"])]
    return renewal + [
        _f(f"site.{name}.tls.expiry", days >= TLS_WARN_DAYS, name,
           f"certificate valid {days} more days", f"certificate expires in {days} days",
           CRITICAL if days < TLS_CRIT_DAYS else WARNING,
           remedy="certbot renew; check `systemctl status certbot.timer`"),
        _f(f"site.{name}.tls.served", served == tls["disk_sha256"], name,
           "nginx serves the certificate on disk",
           f"nginx serves another certificate ({tls.get('served_error') or 'fingerprint differs'})",
           remedy="nginx -t && systemctl reload nginx"),
    ]


def renewal_check(site: Site, conf: str | None) -> Finding:
    """certbot's renewal config of a certificate siteops issued: present, webroot,
    for this site's lineage (else certbot.timer silently cannot renew it)."""
    name = site.name
    problem = ("certbot has no renewal config for it" if conf is None else
               "its renewal config is not for the webroot method"
               if "authenticator = webroot" not in conf else
               "its renewal config points at another certificate"
               if f"/live/{name}/" not in conf else None)
    return _f(f"site.{name}.tls.renewal", problem is None, name,
              "certbot can renew its certificate", f"certbot cannot renew it: {problem}",
              remedy=f"sudo tls {name} (issues it again and rewrites the renewal config)")


def urls_check(site: Site, sf: SiteFacts) -> Finding:
    """The .env's DATABASE_URL and REDIS_URL lead to the site's own database and
    Redis, with the passwords those hold: anything else is a site talking to a
    neighbour's data, or failing to talk to its own."""
    name, problems = site.name, []
    for key, url in sf["urls"].items():
        service = "database" if key == "DATABASE_URL" else "Redis"
        if url["have"] is None:
            problems.append(f"{key} is missing")
        elif not url["home"]:
            problems.append(f"{key} points at {url['have']}, not the site's own {service} "
                            f"({url['want']})")
        elif url["auth"] is False:
            problems.append(f"its {service} refuses {key}'s password")
    return _f(f"site.{name}.env.urls", not problems, name,
              "DATABASE_URL and REDIS_URL lead to the site's own database and Redis",
              "; ".join(problems),
              remedy="audit --fix points them at the site's own services and gives those "
                     "the .env's passwords", fix="urls")


def database_check(site: Site, facts: Facts) -> Finding:
    name = site.name
    dbs = facts["postgres"].get("databases") or {}
    db = site.database
    if db not in dbs:
        return Finding(f"site.{name}.database", CRITICAL, name, f"database {db} is missing",
                       f"add-site {name} ... again creates it (restore its data from a backup)")
    return _f(f"site.{name}.database", not dbs[db], name,
              f"database {db} exists, PUBLIC cannot connect",
              f"PUBLIC can connect to database {db}",
              remedy=f"REVOKE CONNECT ON DATABASE {db} FROM PUBLIC (add-site does it)")
