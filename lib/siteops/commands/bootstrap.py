"""bootstrap: install and harden the shared stack of a multi-site host."""

from __future__ import annotations

import argparse

from .. import (access, backup, cli, distro, fail2ban, firewall, git, hardening, logrotate,
                nftables, nginx, packages, postgres, redis, registry, ssh, sysctl, systemd, tls,
                upgrades, users, validate)
from ..paths import REPO
from ..host import Host

DESCRIPTION = """\
Turn a fresh Ubuntu 24.04 or Debian 12/13 server into a siteops host, or bring
an existing one back in line. Safe to run again: it changes only what differs
and reports each item as "changed" or "ok".

What it does:
  packages   installs what is missing of nginx, PostgreSQL, Redis, UFW,
             fail2ban, certbot, logrotate, unattended-upgrades, auditd, sysstat,
             Node.js (+pnpm), Python (+venv); no apt call when everything is present
  suite      copies siteops to /opt/siteops (the commands sudo allows) and
             makes /etc/siteops, /var/lib/siteops, /var/log/siteops, /srv/sites
  nginx      default site removed, unknown Host headers refused (444),
             server_tokens off, 429 for rate limits, Cloudflare real-IP ranges
  postgresql localhost only, scram-sha-256, each role only into its own
             database, CONNECT on postgres/template1 revoked from PUBLIC
  redis      the shared instance bound to loopback and stopped: every site gets
             its own instance (add-site)
  firewall   UFW denies incoming except 22, 80, 443; fail2ban jails for sshd
             (journal) and nginx rate limits; nftables rules that let only a
             site's own user answer from, and connect to, its ports on loopback
  users      a `deploy` user whose sudo is limited to deploy, rollback, audit,
             sites, config and logs (full sudo only with --deploy-full-sudo)
  ssh        key-only login, checked with `sshd -t`; refuses to run if no
             authorized key would be left to log in with
  kernel     sysctl baseline (/etc/sysctl.d/90-siteops.conf): kernel pointers
             and logs hidden, BPF and ptrace restricted, no redirects or
             source routing, SYN cookies, no core dumps; each setting explained
             in the file
  baseline   unused protocols, storage drivers and filesystems refused
             (modprobe.d); auditd rules for accounts, sudo, sshd, keys, siteops,
             nginx, units, cron, module loads and root's commands; no core
             dumps in logins; login.defs UMASK 027; sysstat history; a legal
             notice in /etc/issue (see lib/siteops/hardening.py for what is
             left out, and why)
  updates    unattended-upgrades on; certbot renewal hook runs `nginx -t` and
             reloads nginx
  audit      siteops-audit.timer runs `audit` hourly (results appended to
             /var/log/siteops/audit.jsonl)
  backups    the restic repository /var/backups/siteops (password generated
             once in /etc/siteops/restic-password: keep a copy elsewhere) and
             siteops-backup.timer, which runs `backup` daily;
             siteops-verify.timer, which runs `backup --verify` weekly
"""

EPILOG = "example:\n  sudo ./bin/bootstrap --deploy-key ~/.ssh/id_ed25519.pub"

SUITE_PARTS = ("bin", "lib", "templates")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("bootstrap", DESCRIPTION, EPILOG)
    p.add_argument("--deploy-key", type=validate.readable_file, metavar="FILE",
                   help="public key(s) to authorize for the deploy user "
                        "(default: copy root's when deploy has none)")
    p.add_argument("--deploy-full-sudo", action="store_true",
                   help="give deploy passwordless sudo for everything, as the reference does")
    p.add_argument("--allow-ssh-lockout", action="store_true",
                   help="turn off SSH passwords even if no authorized key exists")
    p.add_argument("--repo-dir", action="append", default=[], type=validate.absolute_dir,
                   metavar="DIR",
                   help="allow the deploy user (through sudo) to deploy local repositories "
                        "under DIR; repeat for more; kept in /etc/siteops/repo-dirs. The "
                        "repository is read with the deploy user's own permissions")
    p.add_argument("--sleep-after", type=validate.sleep_after, default=argparse.SUPPRESS,
                   metavar="TIME",
                   help="the host's default for new sites: they sleep after this long without "
                        "a request (15m, 2h, ...) or never (the default); kept in "
                        "/etc/siteops/sleep-after; add-site --sleep-after overrides it")
    p.add_argument("--cloudflare-ips", type=validate.readable_file, metavar="FILE",
                   help="replace the shipped Cloudflare ranges with this list (one CIDR a "
                        "line; e.g. https://www.cloudflare.com/ips-v4 and ips-v6 joined)")
    return p


def ensure_suite(host: Host) -> None:
    """Suite directories, and a root-owned copy of the suite in /opt/siteops."""
    with host.step("siteops directories"):
        host.ensure_dir(host.paths.etc, 0o755)
        host.ensure_dir(host.paths.state, 0o700)
        host.ensure_dir(host.paths.log_dir, 0o750)
        host.ensure_dir(host.paths.sites, 0o755)
    logrotate.ensure_host(host)
    target = host.paths.install_dir
    if target.resolve() == REPO:
        return
    with host.step(f"siteops installed in {target}"):
        for part in SUITE_PARTS:
            for src in sorted((REPO / part).rglob("*")):
                if any(p == "__pycache__" or p.startswith(".")  # caches, editors' files
                       for p in src.relative_to(REPO).parts):
                    continue
                dest = target / src.relative_to(REPO)
                if src.is_dir():
                    host.ensure_dir(dest, 0o755)
                else:
                    mode = 0o755 if src.stat().st_mode & 0o111 else 0o644  # bin/, git hooks
                    host.write(dest, src.read_text(), mode)


def ensure_repo_dirs(host: Host, dirs: list[str]) -> None:
    """Add dirs to the local repository directories sudo callers may deploy from."""
    path = host.paths.etc / "repo-dirs"
    current = host.read(path)
    have = git.repo_dirs(host)
    new = [d for d in dirs if d not in have]
    with host.step(f"local repository directories for deploy ({path})"):
        if new or current is None:
            head = current if current is not None else (
                "# Managed by siteops bootstrap --repo-dir: directories under which the deploy\n"
                "# user (through sudo) may deploy a local git repository. One per line.\n")
            host.write(path, head + "".join(f"{d}\n" for d in new))


def refresh_cloudflare(host: Host, text: str) -> None:
    """Keep an operator-supplied (already validated) Cloudflare list in /etc/siteops."""
    with host.step("Cloudflare ranges"):
        host.write(host.paths.etc / "cloudflare-ips.txt", text)


def run(host: Host, args: argparse.Namespace) -> None:
    os_ = distro.detect(host)
    host.say(f"siteops bootstrap on {os_.label}")
    deploy = users.lookup(host, users.DEPLOY_USER)
    deploy_home = deploy.home if deploy else f"/home/{users.DEPLOY_USER}"
    ssh.preflight(host, deploy_home, args.deploy_key, args.allow_ssh_lockout)
    cloudflare = args.cloudflare_ips.read_text() if args.cloudflare_ips else None
    if cloudflare is not None:
        nginx.parse_ranges(cloudflare)  # refuse a bad list before any change

    packages.ensure_installed(host)
    ensure_suite(host)
    if cloudflare is not None:
        refresh_cloudflare(host, cloudflare)
    nginx.ensure_base(host)
    cluster = postgres.ensure_cluster(host, os_.pg_major)
    postgres.ensure_config(host, cluster)
    redis.ensure_shared(host)
    firewall_extra = firewall.ensure(host)
    with host.step("loopback port ownership (nftables)"):
        nftables.ensure_boot_unit(host)
        nftables.ensure(host, list(registry.load(host).sites.values()))
    fail2ban.ensure(host)
    sysctl.ensure(host)
    users.ensure_deploy_user(host)
    ssh.ensure_deploy_keys(host, deploy_home, args.deploy_key)
    with host.step("deploy's keys: the operator's recorded, tenants' file"):
        access.record_operator_keys(host, deploy_home)
        access.write(host, list(registry.load(host).sites.values()), create=True)
    users.ensure_sudoers(host, host.paths.install_dir / "bin", args.deploy_full_sudo)
    ensure_repo_dirs(host, args.repo_dir)
    if "sleep_after" in args:
        with host.step(f"new sites sleep after {validate.duration(args.sleep_after)} "
                       "without a request"):
            host.write(host.paths.sleep_default, validate.duration(args.sleep_after) + "\n")
    ssh.ensure_key_only(host)
    hardening.ensure(host)
    upgrades.ensure(host)
    tls.ensure_renewal_hook(host)
    systemd.ensure_timer(host, "audit")
    backup.ensure_repository(host)
    systemd.ensure_timer(host, "backup")
    systemd.ensure_timer(host, "verify")
    systemd.ensure_timer(host, "usage")
    if firewall_extra:
        host.say(f"note: UFW also allows {', '.join(firewall_extra)}; siteops left "
                 "those rules alone (`audit` reports them)")


def main(argv: list[str] | None = None, host: Host | None = None) -> int:
    return cli.main("bootstrap", build_parser(), run, argv, host)
