"""Backups proven restorable (backup --verify): the repository checked by
restic with a read of a subset of its data, then each site's newest snapshot
restored into scratch space and compared with what the snapshot holds:

  files     every file the snapshot lists is restored, with its size
            (restic restore --verify reads each one back against its hashes);
  database  the dump is restored into a scratch database owned by the
            site's role (as that role: the dump is the tenant's data, never
            run as the superuser), and each table holds as many rows as the
            dump's data for it;
  redis     the RDB loads (redis-check-rdb, as the site's user).

The scratch directory and database are removed whatever happens. Each
site's result is kept in /var/lib/siteops/verified.json for audit."""

from __future__ import annotations

import json
from pathlib import Path

from . import backup, postgres
from .errors import CommandError, SiteopsError
from .host import Host
from .journal import now
from .model import Site

READ_DATA_SUBSET = "5%"  # of the pack files, chosen at random by each check

# The rows of each table in a custom-format dump: its data as COPY text, one
# line per row (newlines inside values are escaped), counted as it streams.
ROWS_PER_TABLE = r"""
  /^COPY .* FROM stdin;$/ {
    match(substr($0, 6), /^("([^"]|"")*"|[^ ."]+)\.("([^"]|"")*"|[^ ."]+)/)
    table = substr($0, 6, RLENGTH); rows = 0; copying = 1; next }
  copying && /^\\\.$/ { print table "\t" rows; copying = 0; next }
  copying { rows++ }"""
COUNT_ROWS = f"pg_restore --data-only --file=- \"$1\" | awk '{ROWS_PER_TABLE}'"


def results_path(host: Host) -> Path:
    return host.paths.state / "verified.json"


def results(host: Host) -> dict[str, dict]:
    """{site: {time, ok, snapshot, error}} of each site's last verification."""
    text = host.read(results_path(host))
    try:
        doc = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def record(host: Host, name: str, snapshot: str, error: str | None) -> None:
    doc = results(host)
    doc[name] = {"time": now(), "ok": error is None, "snapshot": snapshot, "error": error}
    host.write(results_path(host), json.dumps(doc, indent=1, sort_keys=True) + "\n", 0o600)


def check_repository(host: Host) -> None:
    """restic check, reading a random subset of the data; SiteopsError with
    restic's own words if it finds damage."""
    with host.step(f"repository checked (reading {READ_DATA_SUBSET} of its data)"):
        res = backup.restic(host, "check", f"--read-data-subset={READ_DATA_SUBSET}",
                            change=False, ok=range(256))
        if res.code != 0:
            lines = [ln for ln in (res.err + res.out).splitlines() if ln.strip()]
            raise SiteopsError("restic check found damage in the repository: "
                               + " / ".join(lines[-4:]))


def listed_files(host: Host, snapshot: str) -> dict[str, int]:
    """{path: size} of the regular files the snapshot lists."""
    out = backup.restic(host, "ls", "--json", snapshot, change=False).out
    files = {}
    for line in out.splitlines():
        try:
            node = json.loads(line)
        except json.JSONDecodeError:
            continue
        if node.get("type") == "file" and "path" in node:
            files[node["path"]] = int(node.get("size") or 0)
    return files


def compare_files(target: Path, files: dict[str, int]) -> list[str]:
    """What differs between the restored tree and the snapshot's listing."""
    wrong = []
    for path, size in sorted(files.items()):
        restored = backup.inside(target, Path(path))
        if not restored.is_file():
            wrong.append(f"{path} not restored")
        elif restored.stat().st_size != size:
            wrong.append(f"{path} is {restored.stat().st_size} bytes, the snapshot says {size}")
    return wrong


def dump_rows(host: Host, dump: Path) -> dict[str, int]:
    """{schema.table: rows} of the dump's data."""
    out = host.query(["bash", "-o", "pipefail", "-c", COUNT_ROWS, "count", str(dump)]).out
    return {table: int(rows) for table, rows in
            (line.rsplit("\t", 1) for line in out.splitlines() if line.strip())}


def scratch_database(site: Site) -> str:
    return f"{site.database}__verify"


def restored_rows(host: Host, site: Site, dump: Path, tables: list[str]) -> dict[str, int]:
    """The dump restored into the scratch database (as the site's role), and
    the rows of each of its tables there."""
    db, role = scratch_database(site), site.user
    try:
        backup.load_dump(host, site, db, dump, note=f"the dump of {site.database}, into {db}")
    except CommandError as exc:
        if "pg_restore" not in exc.argv:  # the scratch database itself could not be made
            raise
        raise SiteopsError(f"the database dump does not load: {exc.stderr.strip()[-300:]}"
                           ) from None
    if not tables:
        return {}
    # pg_dump's names are quoted identifiers; counted as the site's role.
    counts = "".join(f"SELECT count(*) FROM {t};\n" for t in tables)
    out = host.query(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
                      "-v", "ON_ERROR_STOP=1", "-d", db],
                     input=f'SET ROLE "{role}";\n{counts}').out.split()
    return dict(zip(tables, map(int, out)))


def drop_scratch(host: Host, site: Site) -> None:
    postgres.psql(host, f'DROP DATABASE IF EXISTS "{scratch_database(site)}" WITH (FORCE);',
                  change=True)


def verify_site(host: Host, site: Site) -> str:
    """Restore the site's newest snapshot into scratch space and compare it
    with what the snapshot holds; return the snapshot's id, or raise
    SiteopsError naming what is wrong."""
    name = site.name
    snapshot = backup.find_snapshot(host, name, None)
    target = host.paths.state / "verify" / name
    staged = host.paths.staging(name)
    try:
        with host.step(f"{name}: snapshot {snapshot['short_id']} restored to scratch space"):
            host.remove_tree(target)
            host.ensure_dir(target.parent, 0o700)
            host.ensure_dir(target, 0o700)
            backup.restic(host, "restore", snapshot["id"], "--target", str(target), "--verify")
        wrong = compare_files(target, listed_files(host, snapshot["id"]))
        if wrong:
            raise SiteopsError(f"{len(wrong)} file(s) differ: " + "; ".join(wrong[:5]))
        dump = backup.inside(target, staged / "database.dump")
        with host.step(f"{name}: database dump restored to {scratch_database(site)}"):
            if not dump.is_file():
                raise SiteopsError("the snapshot has no database dump")
            try:
                expected = dump_rows(host, dump)
            except CommandError as exc:
                raise SiteopsError("the database dump cannot be read: "
                                   f"{exc.stderr.strip()[-300:]}") from None
            got = restored_rows(host, site, dump, sorted(expected))
        off = [f"{t}: {got.get(t)} rows restored, the dump has {n}"
               for t, n in sorted(expected.items()) if got.get(t) != n]
        if off:
            raise SiteopsError("; ".join(off[:5]))
        rdb = backup.inside(target, host.paths.of(name).redis / "dump.rdb")
        if rdb.is_file():
            with host.step(f"{name}: Redis dump loads"):
                # The RDB is the tenant's data: parsed as the site's user, from
                # a copy of its own (the scratch tree is root's only; the
                # checker needs a file, not a pipe).
                res = host.query(["bash", "-o", "pipefail", "-c",
                                  'cat -- "$2" | runuser -u "$1" -- sh -c \'f=$(mktemp) && '
                                  'cat > "$f" && redis-check-rdb "$f"; r=$?; rm -f "$f"; '
                                  'exit $r\'', "check", name, str(rdb)], ok=range(256))
                if res.code != 0:
                    raise SiteopsError("the Redis dump does not load: "
                                       + (res.out + res.err).strip().splitlines()[-1][:300])
        host.say(f"{'':13}{name}: {len(expected)} table(s), "
                 f"{sum(expected.values())} row(s), files as listed")
        return snapshot["short_id"]
    finally:
        host.remove_tree(target)
        drop_scratch(host, site)


def verify(host: Host, sites: list[Site]) -> list[str]:
    """The repository, then each site; returns the sites that failed (each
    named with why on the output), every result recorded."""
    failed = []
    try:
        check_repository(host)
    except SiteopsError as exc:
        host.say(f"{'failed':<13}{exc}")
        failed.append("the repository")
    for site in sites:
        try:
            sid = verify_site(host, site)
            record(host, site.name, sid, None)
        except SiteopsError as exc:
            host.say(f"{'failed':<13}{site.name}: {exc}")
            record(host, site.name, "", str(exc))
            failed.append(site.name)
    return failed
