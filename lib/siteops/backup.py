"""Backups with restic: encrypted, deduplicated, incremental, pruned.

The repository is /var/backups/siteops unless /etc/siteops/backup.env names
another (RESTIC_REPOSITORY=sftp:..., s3:..., rest:...; that file, root-only,
also holds the backend's credentials and the retention). The password is
generated once into /etc/siteops/restic-password (root-only); restic reads it
from the file, so it is never in an argument or the environment of another
process.

A site's snapshot (tag site:NAME) holds a consistent `pg_dump` of its
database, a fresh Redis RDB, its registry entry (site.json), shared/uploads,
shared/.env, every file siteops generates for it (parts.py), its
certificate, its repository mirror and deploy key: enough to bring the site
back on a new host. The host's snapshot (tag host) holds /etc/siteops and the
registry. The dump, the RDB and site.json are staged in
/var/lib/siteops/backup/NAME (root-only) and read from there."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from . import envfile, model, parts, postgres, redis, safefs, systemd, units
from .errors import SiteopsError
from .model import Site
from .host import Host, Result

RETENTION = {"KEEP_DAILY": "7", "KEEP_WEEKLY": "4", "KEEP_MONTHLY": "6"}
HOST_TAG = "host"
SAFETY_TAG = "before-restore"
REMOVED_TAG = "removed"  # remove-site's final snapshot of a site


def site_tag(name: str) -> str:
    return f"site:{name}"


def conf_path(host: Host) -> Path:
    return host.paths.etc / "backup.env"


def password_path(host: Host) -> Path:
    return host.paths.etc / "restic-password"


def settings(host: Host) -> dict[str, str]:
    """backup.env's values over the defaults (repository, retention)."""
    values = {"RESTIC_REPOSITORY": str(host.paths.backup_repository), **RETENTION}
    values.update(envfile.parse(host.read(conf_path(host)) or ""))
    for key in RETENTION:
        if not values[key].isdigit():
            raise SiteopsError(f"{conf_path(host)}: {key} must be a whole number, "
                               f"not {values[key]!r}")
    return values


# A repository other than the host's own that snapshots are read from (restore
# --from-repository, move-site's transfer repository): (repository, password file).
_READING: contextvars.ContextVar[tuple[str, Path] | None] = contextvars.ContextVar(
    "reading", default=None)


@contextlib.contextmanager
def reading(repository: str | None, password_file: Path | None) -> Iterator[None]:
    """Within this block restic reads from repository (None: the host's own)."""
    token = _READING.set((repository, password_file) if repository and password_file else None)
    try:
        yield
    finally:
        _READING.reset(token)


def restic_env(host: Host) -> dict[str, str]:
    """restic's environment: repository, password file, cache, credentials."""
    other = _READING.get()
    if other:
        return {"RESTIC_REPOSITORY": other[0], "RESTIC_PASSWORD_FILE": str(other[1]),
                "RESTIC_CACHE_DIR": str(host.paths.restic_cache)}
    env = {k: v for k, v in settings(host).items() if k not in RETENTION}
    env["RESTIC_PASSWORD_FILE"] = str(password_path(host))
    env["RESTIC_CACHE_DIR"] = str(host.paths.restic_cache)
    return env


def restic(host: Host, *args: str, change: bool = True, timeout: float = 3600,
           ok=(0,), slice_of: str | None = None):
    """Run restic against the repository (a change is recorded, and skipped in a
    dry run; a read runs in a dry run too); with slice_of, in that site's slice."""
    argv = ["restic", "--quiet", *args]
    if slice_of:
        argv = systemd.in_slice(slice_of, argv)
    env = restic_env(host)
    secrets = [v for k, v in env.items() if k not in ("RESTIC_REPOSITORY", "RESTIC_CACHE_DIR",
                                                      "RESTIC_PASSWORD_FILE")]
    if change:
        return host.run(argv, env=env, timeout=timeout, secrets=secrets)
    return host.query(argv, env=env, timeout=timeout, secrets=secrets, ok=ok)


def readable(host: Host) -> str | None:
    """None if the repository opens with the password, else restic's reason."""
    res = restic(host, "cat", "config", change=False, ok=range(256), timeout=120)
    return None if res.code == 0 else reason(res)


def reason(res: Result) -> str:
    """Why a restic command failed, on one line."""
    return " ".join((res.err or res.out).split()) or f"restic exited {res.code}"


def no_password(host: Host) -> str | None:
    """Why restic cannot open any repository here (no password file), or None."""
    path = password_path(host)
    return f"no repository password in {path}" if host.read(path) is None else None


def problem(host: Host) -> str | None:
    """Why the existing repository cannot be read (no password file, or what
    restic says), or None."""
    return no_password(host) or readable(host)


def ensure_repository(host: Host) -> None:
    """The password (generated once) and the repository (initialised once)."""
    repo = settings(host)["RESTIC_REPOSITORY"]
    with host.step(f"backup repository {repo}"):
        if host.read(password_path(host)) is None:
            host.write(password_path(host), envfile.secret() + "\n", 0o600)
        if repo.startswith("/"):
            host.ensure_dir(Path(repo).parent, 0o755)
        reason = readable(host)
        if reason is None:
            return
        if "Is there a repository" not in reason and not host.dry_run:
            raise SiteopsError(f"backup repository {repo} cannot be opened: {reason}")
        restic(host, "init")


def listing(host: Host, tag: str | None = None, ok: Sequence[int] = (0,)) -> Result:
    """restic's JSON list of the repository's snapshots (with a tag: only those)."""
    args = ["snapshots", "--json", "--no-lock"] + (["--tag", tag] if tag else [])
    return restic(host, *args, change=False, ok=ok, timeout=300)


def snapshots(host: Host, tag: str | None = None) -> list[dict]:
    """The repository's snapshots (with a tag: only those), oldest first."""
    return sorted(json.loads(listing(host, tag).out or "[]"), key=lambda s: s["time"])


def instant(restic_time: str) -> datetime.datetime:
    """restic's snapshot time (2026-11-26T12:20:01.123456789+01:00) as an aware
    datetime, to the microsecond."""
    stamp = re.sub(r"(\.\d{1,6})\d*", r"\1", restic_time).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp)


def utc(restic_time: str) -> str:
    """restic's snapshot time as 2026-11-26T11:20:01Z."""
    return instant(restic_time).astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def tags(snapshot: dict) -> list[str]:
    return snapshot.get("tags") or []


def facts(host: Host) -> dict:
    """{error: why the repository cannot be read | null, latest: {site: UTC time
    of its newest snapshot}}, from one restic run (a listing that fails says
    why the repository cannot be read)."""
    error = no_password(host)
    if error:
        return {"error": error, "latest": {}}
    res = listing(host, ok=range(256))
    if res.code != 0:
        return {"error": reason(res), "latest": {}}
    latest: dict[str, str] = {}
    for snap in json.loads(res.out or "[]"):
        for tag in tags(snap):
            if tag.startswith("site:"):
                latest[tag[5:]] = max(latest.get(tag[5:], ""), utc(snap["time"]))
    return {"error": None, "latest": latest}


# -- what a site's snapshot holds ---------------------------------------------

def site_files(host: Host, site: Site) -> list[Path]:
    """The site's paths in its snapshot: the staged dumps (dump_site makes
    them first), and those of its data, generated and root-only files that
    exist (parts.py)."""
    return [host.paths.staging(site.name)] + parts.present(
        parts.files(host, site, "data", "generated", "root-only"))


def dump_site(host: Host, site: Site) -> None:
    """Stage the database dump, a fresh Redis RDB and the registry entry."""
    name, stage = site.name, host.paths.staging(site.name)
    host.ensure_dir(stage.parent, 0o700)
    host.ensure_dir(stage, 0o700)
    host.write(stage / "site.json", json.dumps(model.site_to_json(site), indent=2,
                                               sort_keys=True) + "\n", 0o600)
    # root's shell opens the file; pg_dump (as postgres) only writes to it.
    host.run(systemd.in_slice(name, [
        "bash", "-c", 'umask 077 && runuser -u postgres -- pg_dump --format=custom '
        '--dbname="$1" > "$2"', "pg_dump", site.database, stage / "database.dump"]),
        note=f"pg_dump of {site.database}")
    env = envfile.parse(host.read(host.paths.of(name).env) or "")
    if systemd.is_active(host, units.redis_unit(name)) and "REDIS_URL" in env:
        redis.save(host, site, env["REDIS_URL"])


def backup_site(host: Host, site: Site, tags: tuple[str, ...] = ()) -> str:
    """One snapshot of the site; return its id."""
    with host.step(f"backup of {site.name}"):
        dump_site(host, site)
        args = ["backup", "--json", "--tag", site_tag(site.name)]
        for tag in tags:
            args += ["--tag", tag]
        out = restic(host, *args, *map(str, site_files(host, site)), slice_of=site.name).out
    return snapshot_id(out)


def backup_host(host: Host) -> str:
    """One snapshot of /etc/siteops and the registry (the password file left out)."""
    with host.step("backup of the host's siteops state"):
        out = restic(host, "backup", "--json", "--tag", HOST_TAG,
                     "--exclude", str(password_path(host)), str(host.paths.etc),
                     str(host.paths.registry)).out
    return snapshot_id(out)


def snapshot_id(restic_json: str) -> str:
    for line in reversed(restic_json.splitlines()):
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if doc.get("message_type") == "summary":
            return doc.get("snapshot_id", "")[:8]
    return ""


def unlock_stale(host: Host) -> None:
    """Remove the locks of restic processes that no longer run (a backup killed
    mid-way leaves one, and it would fail every later forget and prune); a
    running restic's lock is kept."""
    with host.step("stale repository locks removed"):
        if restic(host, "list", "locks", "--no-lock", change=False).out.strip():
            restic(host, "unlock")


def forget(host: Host, tag: str) -> None:
    """Apply the retention to one site's (or the host's) snapshots (prune() then
    frees the space, once for the whole repository)."""
    keep = settings(host)
    with host.step(f"retention of {tag}"):
        restic(host, "forget", "--tag", tag, "--group-by", "tags",
               "--keep-daily", keep["KEEP_DAILY"], "--keep-weekly", keep["KEEP_WEEKLY"],
               "--keep-monthly", keep["KEEP_MONTHLY"])


def prune(host: Host) -> None:
    """Free the space of forgotten snapshots."""
    with host.step("repository pruned"):
        restic(host, "prune")


# -- restore --------------------------------------------------------------------

@dataclass
class Recovery:
    """What `restore --all` brings back: the sites of the host's newest state
    snapshot and those backed up after it, except a site whose newest snapshot
    is remove-site's final one."""
    host_snapshot: dict
    sites: list[str]      # to restore, each from its newest snapshot
    removed: list[str]    # in the repository, but no longer on the host backed up
    missing: list[str]    # on the host backed up, but never backed up themselves


def recovery(host: Host) -> Recovery:
    """Which sites the host had when it was last backed up (reads the registry
    out of the newest host snapshot with `restic dump`)."""
    snaps = snapshots(host)
    states = [s for s in snaps if HOST_TAG in tags(s)]
    if not states:
        raise SiteopsError("the repository holds no snapshot of the host's state (a full "
                           "`backup` run takes one), so it cannot say which sites the host "
                           "had: name the sites to restore (restore NAME ... --yes)")
    state = states[-1]
    dumped = restic(host, "dump", state["id"], str(host.paths.registry), change=False,
                    timeout=300).out
    try:
        had = {name for name, entry in json.loads(dumped)["sites"].items()
               if entry.get("state") != "removing"}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SiteopsError(f"the registry in host snapshot {state['short_id']} cannot be "
                           f"read ({exc})") from exc
    newest: dict[str, dict] = {}
    for snap in snaps:
        if SAFETY_TAG not in tags(snap):
            for tag in tags(snap):
                if tag.startswith("site:"):
                    newest[tag[5:]] = snap  # oldest first: the last one wins
    since = instant(state["time"])
    later = {name for name, snap in newest.items() if instant(snap["time"]) > since}
    removed = {name for name, snap in newest.items() if REMOVED_TAG in tags(snap)}
    sites = sorted(((had & set(newest)) | later) - removed)
    return Recovery(state, sites, sorted(set(newest) - set(sites)), sorted(had - set(newest)))


def find_snapshot(host: Host, name: str, wanted: str | None) -> dict:
    """The site's snapshot whose id starts with wanted, or its newest backup.
    A restore's own safety snapshot (tagged before-restore) is never the
    default: a restore run again after an interruption must restore what the
    first run meant to, not what that run saved on its way."""
    snaps = snapshots(host, site_tag(name))
    if wanted:
        snaps = [s for s in snaps if s["id"].startswith(wanted)]
        if not snaps:
            raise SiteopsError(f"no snapshot {wanted!r} of site {name} in the repository "
                               f"(see: backup --list {name})")
    else:
        snaps = [s for s in snaps if SAFETY_TAG not in tags(s)]
    if not snaps:
        raise SiteopsError(f"the repository has no backup of site {name} to restore "
                           "(before-restore safety snapshots are restored only by --snapshot ID)")
    return snaps[-1]


def extract(host: Host, snapshot: str, target: Path) -> Path:
    """The whole snapshot restored under target (emptied first, root-only)."""
    host.remove_tree(target)
    host.ensure_dir(target.parent, 0o700)
    host.ensure_dir(target, 0o700)
    restic(host, "restore", snapshot, "--target", str(target))
    return target


def inside(target: Path, path: Path) -> Path:
    """Where path of the snapshot lies in its extraction under target."""
    return target / str(path).lstrip("/")


def restore_database(host: Host, site: Site, dump: Path) -> None:
    """Replace the site's database with the dump's: restored into a new database
    owned by the site's role, which then takes the old one's name (a failed
    restore leaves the live database untouched)."""
    db, temp = site.database, f"{site.database}__restore"
    load_dump(host, site, temp, dump, note=f"the dump of {db}")
    postgres.psql(host, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);', change=True)
    postgres.psql(host, f'ALTER DATABASE "{temp}" RENAME TO "{db}";', change=True)


def load_dump(host: Host, site: Site, db: str, dump: Path, note: str) -> None:
    """A new database db (made again if it exists), owned by the site's role,
    with the dump restored into it as that role: the dump is the tenant's
    data, and its functions and triggers never run as the superuser."""
    role = site.user
    postgres.psql(host, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE);', change=True)
    postgres.psql(host, f'CREATE DATABASE "{db}" OWNER "{role}" TEMPLATE template0 '
                        "ENCODING 'UTF8';", change=True)
    postgres.psql(host, f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC;', change=True)
    host.run(["bash", "-c", 'runuser -u postgres -- pg_restore --exit-on-error --no-owner '
              '--role="$1" --dbname="$2" < "$3"', "pg_restore", role, db, dump], note=note)


def replace_dir_as_user(host: Host, source: Path, dest: Path, user: str, mode: int) -> None:
    """Make dest (in a root-owned directory) hold a copy of source's tree,
    written by user itself (root never writes in a tree a site controls), then
    swapped in with rename(2); the old tree is deleted."""
    new = dest.with_name(dest.name + ".restoring")
    old = dest.with_name(dest.name + ".replaced")
    host.remove_tree(new)
    host.remove_tree(old)
    host.ensure_dir(new, mode, user, user)
    if source.is_dir():
        host.run(["bash", "-o", "pipefail", "-c", 'tar -C "$1" -cf - . | runuser -u "$2" -- '
                  'tar -C "$3" -xpf - --no-same-owner', "copy", source, user, new],
                 note=f"{source} copied as {user}")
    if safefs.lstat(dest) is not None:
        host.rename(dest, old.name)
    host.rename(new, dest.name)
    host.remove_tree(old)

