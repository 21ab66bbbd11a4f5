"""backup: snapshot sites into the restic repository, list snapshots, or set
where they go."""

from __future__ import annotations

import argparse
import json
import sys

from .. import backup, cli, envfile, registry, validate, verify
from ..errors import SiteopsError, UsageError
from ..model import READY
from ..host import Host

DESCRIPTION = """\
Back up sites with restic: encrypted, deduplicated and incremental, so a
daily backup of an unchanged site adds almost nothing. Without NAME: every
site, then the host's siteops state (/etc/siteops and the registry).

What a site's snapshot holds:
  database   a consistent pg_dump of its PostgreSQL database
  redis      a fresh RDB of its Redis (SAVE)
  files      shared/uploads, shared/.env
  config     its registry entry and every file siteops generates for it
             (nginx site and link, unit templates, the live release's
             drop-ins and job units, Redis config, logrotate: parts.py),
             its certificate, its repository mirror and deploy key
Each snapshot is tagged site:NAME; after it, the retention is applied to the
site's snapshots (and, after a run over every site, the space of forgotten
snapshots freed: restic prune). `restore NAME` brings one back. A site's
pg_dump and restic run in the site's slice: their CPU, IO and memory count
against its limits, and under its memory limit they, not its apps, are the
first killed.

Where: /var/backups/siteops (root-only) unless --repository names another,
e.g. sftp:backup@host:/srv/restic, s3:s3.amazonaws.com/bucket/siteops,
rest:https://host:8000/siteops; --credentials FILE copies its KEY=VALUE lines
(AWS_ACCESS_KEY_ID=..., RESTIC_REST_PASSWORD=...) into /etc/siteops/backup.env
(root-only), never on a command line. The repository's password is generated
once in /etc/siteops/restic-password: keep a copy of it somewhere else, since
no snapshot can be read without it.

bootstrap installs siteops-backup.timer: `backup` daily, at a random moment
within the hour after midnight. audit reports a site whose newest snapshot is
older than 26 hours (warning) or two days (critical), and a repository it
cannot read.

--verify proves the backups restore, changing nothing live: `restic check`
reading a random 5% of the repository's data, then each site's newest
snapshot restored into scratch space (/var/lib/siteops/verify/NAME and a
database NAME__verify, removed whatever happens) and compared with what the
snapshot holds: every file it lists, with its size, read back against its
hashes; each table of the database dump with as many rows once restored
(as the site's role) as the dump has; the Redis dump loads. bootstrap
installs siteops-verify.timer (weekly); audit warns when a site was not
verified for 8 days or its last verification failed.
"""

EPILOG = """\
examples:
  sudo backup                          every site, then the host's state
  sudo backup shop                     one site now
  sudo backup --list shop              its snapshots
  sudo backup --verify                 prove every site's newest snapshot restores
  sudo backup --repository sftp:backup@nas:/srv/restic --credentials ./creds
  sudo backup --keep-daily 14 --keep-weekly 8 --keep-monthly 12
"""

RETENTION_FLAGS = {"keep_daily": "KEEP_DAILY", "keep_weekly": "KEEP_WEEKLY",
                   "keep_monthly": "KEEP_MONTHLY"}


def credentials_file(value: str) -> dict[str, str]:
    """KEY=VALUE lines of a readable file, keys like environment variables."""
    path = validate.readable_file(value)
    values = envfile.parse(path.read_text())
    bad = [k for k in values if not k.replace("_", "").isalnum() or not k[:1].isalpha()
           or k != k.upper() or k in ("RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE")]
    if not values or bad:
        raise validate.InvalidInput(f"--credentials {value}: want KEY=VALUE lines with "
                                    "upper-case keys" + (f" (not {bad[0]})" if bad else ""))
    return values


def repository(value: str) -> str:
    """A restic repository: an absolute path or BACKEND:... with no spaces."""
    scheme = value.split(":", 1)[0]
    if not (value.startswith("/") or (scheme in ("sftp", "s3", "rest", "b2", "azure", "gs",
                                                 "swift", "rclone") and ":" in value)) \
            or any(c.isspace() or ord(c) < 32 for c in value) or len(value) > 500:
        raise validate.InvalidInput(f"invalid --repository {value!r}: an absolute path or "
                                    "sftp:..., s3:..., rest:..., b2:..., azure:..., gs:..., "
                                    "swift:..., rclone:...")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("backup", DESCRIPTION, EPILOG)
    p.add_argument("names", nargs="*", type=validate.site_name, metavar="NAME",
                   help="sites to back up (default: every site and the host's state)")
    p.add_argument("--list", action="store_true", help="list the snapshots (of NAME, or all)")
    p.add_argument("--verify", action="store_true",
                   help="prove the backups restore: restic check, then each site's (or NAME's) "
                        "newest snapshot restored into scratch space and compared")
    p.add_argument("--json", action="store_true", help="with --list: JSON")
    p.add_argument("--repository", type=repository, metavar="REPO",
                   help="set where backups go (then exit, unless NAME is given)")
    p.add_argument("--credentials", type=credentials_file, metavar="FILE",
                   help="KEY=VALUE credentials of the repository's backend")
    for flag, key in RETENTION_FLAGS.items():
        option = "--" + flag.replace("_", "-")
        p.add_argument(option, type=validate.number(option, 0, 1000), metavar="N",
                       help=f"snapshots kept per site, {key.split('_')[1].lower()} "
                            f"(default {backup.RETENTION[key]})")
    return p


def configure(host: Host, args: argparse.Namespace) -> None:
    """Merge the new settings into /etc/siteops/backup.env (root-only)."""
    path = backup.conf_path(host)
    values = envfile.parse(host.read(path) or "")
    if args.repository:
        values["RESTIC_REPOSITORY"] = args.repository
    values.update(args.credentials or {})
    for flag, key in RETENTION_FLAGS.items():
        if getattr(args, flag) is not None:
            values[key] = str(getattr(args, flag))
    text = ("# Managed by siteops backup: restic's repository, its backend's credentials\n"
            "# and the retention. Root-only: it holds secrets.\n"
            + "".join(f"{k}={v}\n" for k, v in values.items()))
    with host.step(f"backup settings ({path})"):
        host.write(path, text, 0o600)


def list_snapshots(host: Host, names: list[str], as_json: bool) -> None:
    snaps = backup.snapshots(host)
    if names:
        tags = {backup.site_tag(n) for n in names}
        snaps = [s for s in snaps if tags & set(s.get("tags") or [])]
    if as_json:
        print(json.dumps([{k: s.get(k) for k in ("short_id", "id", "time", "tags", "paths")}
                          for s in snaps], indent=2))
        return
    host.say(f"{'ID':<10}{'TIME':<22}TAGS")
    for s in snaps:
        host.say(f"{s['short_id']:<10}{s['time'][:19].replace('T', ' '):<22}"
                 f"{', '.join(s.get('tags') or [])}")
    host.say(f"{len(snaps)} snapshot(s) in {backup.settings(host)['RESTIC_REPOSITORY']}")


def run(host: Host, args: argparse.Namespace) -> int:
    if args.json:
        host.out = sys.stderr  # progress must not mix with the document
    configuring = args.repository or args.credentials or any(
        getattr(args, f) is not None for f in RETENTION_FLAGS)
    if (args.list or args.verify) and configuring:
        raise UsageError("--list and --verify cannot be combined with settings")
    if args.list and args.verify:
        raise UsageError("give --list or --verify, not both")
    if configuring:
        configure(host, args)
    backup.ensure_repository(host)
    if args.list:
        list_snapshots(host, args.names, args.json)
        return 0
    if configuring and not args.names:
        return 0
    data = registry.load(host)
    sites = [registry.get_site(data, n) for n in args.names] if args.names else \
        [s for s in data.sites.values() if s.state == READY]
    if args.verify:
        failed = verify.verify(host, sites)
        if failed:
            raise SiteopsError(f"verification failed: {', '.join(failed)}")
        host.say(f"verified the repository and {len(sites)} site(s)")
        return 0
    backup.unlock_stale(host)
    failed = []
    for site in sites:
        try:
            sid = backup.backup_site(host, site)
            host.say(f"{'':13}snapshot {sid} of {site.name}")
            backup.forget(host, backup.site_tag(site.name))
        except SiteopsError as exc:
            failed.append(site.name)
            host.say(f"{'failed':<13}backup of {site.name}: {exc}")
    if not args.names:
        backup.backup_host(host)
        backup.forget(host, backup.HOST_TAG)
        backup.prune(host)
    if failed:
        raise SiteopsError(f"backup of {', '.join(failed)} failed (the others succeeded)")
    return 0


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("backup", build_parser(), run, argv, host)
