"""deploy: build a commit into a new release and switch to it without dropping a request."""

from __future__ import annotations

import argparse

from .. import cli, model, validate
from ..host import Host
from ..ops import deploy as deploy_op

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
                   default=deploy_op.MIN_FREE_MB, metavar="MB",
                   help="refuse to deploy with less free disk than this "
                        f"(default {deploy_op.MIN_FREE_MB})")
    p.add_argument("--keep-warm", action="store_true",
                   help="keep the live release's web instances running after the switch, out of "
                        "nginx, so that a rollback to it needs no start (its memory, shown, "
                        "stays in use until the next deploy, rollback or restart)")
    p.add_argument("--no-fetch", action="store_true",
                   help="build REF from the site's mirror as it is, without fetching (a "
                        "restored site whose repository is not reachable from here)")
    return p


def run(host: Host, args: argparse.Namespace, pushed: str | None = None) -> None:
    deploy_op.deploy(host, args.name, args.ref, repo=args.repo, pushed=pushed, keep=args.keep,
                     starts=args.start, health=args.health, keep_warm=args.keep_warm,
                     fetch=not args.no_fetch, min_free_mb=args.min_free_mb)


def main(argv: list[str] | None = None, host: Host | None = None,
         pushed: str | None = None) -> int:
    """pushed: the branch or tag of a tenant's git push (its pre-receive hook)."""
    return cli.main("deploy", build_parser(), lambda h, a: run(h, a, pushed), argv, host)
