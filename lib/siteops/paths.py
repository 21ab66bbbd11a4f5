"""Every path the suite touches on a server, from one place.

Tests point the suite at a temporary tree by building Paths(root=tmp).
"""

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates"


@dataclass(frozen=True)
class Paths:
    root: Path = Path("/")

    @functools.lru_cache(maxsize=4096)  # audit asks for each of 500 sites' paths
    def p(self, path: str) -> Path:
        """Return an absolute server path below this root."""
        return self.root / path.lstrip("/")

    # The suite's own state.
    @property
    def etc(self) -> Path:
        return self.p("/etc/siteops")

    @property
    def state(self) -> Path:
        return self.p("/var/lib/siteops")

    @property
    def registry(self) -> Path:
        return self.state / "registry.json"

    @property
    def registry_lock(self) -> Path:
        return self.state / "registry.lock"

    @property
    def alerts_lock(self) -> Path:
        """Held while what alerts said (alerts.json) is read, sent and written."""
        return self.state / "alerts.lock"

    def site_lock(self, name: str) -> Path:
        """A site's own lock: one deploy, rollback or restart at a time."""
        return self.state / "locks" / f"{name}.lock"

    def staging(self, name: str) -> Path:
        """Where a site's backup stages its database dump, Redis RDB and entry."""
        return self.state / "backup" / name

    def certificate(self, name: str) -> list[Path]:
        """A site's certbot lineage (live/NAME, archive/NAME) and renewal config."""
        return [self.letsencrypt_live / name, self.letsencrypt / "archive" / name,
                self.letsencrypt / "renewal" / f"{name}.conf"]

    # Files and directories of the host's services that siteops writes or reads.
    @property
    def letsencrypt(self) -> Path:
        return self.p("/etc/letsencrypt")

    @property
    def letsencrypt_live(self) -> Path:
        return self.letsencrypt / "live"

    @property
    def certbot_hook(self) -> Path:
        """certbot's deploy hook: `nginx -t` and a reload after each renewal."""
        return self.letsencrypt / "renewal-hooks" / "deploy" / "siteops-reload-nginx"

    @property
    def auto_upgrades(self) -> Path:
        return self.p("/etc/apt/apt.conf.d/20auto-upgrades")

    @property
    def boot_wants(self) -> Path:
        """Where `systemctl enable` links what starts at boot."""
        return self.unit("multi-user.target.wants")

    @property
    def socket_wants(self) -> Path:
        """Where `systemctl enable` links the sockets that listen from boot."""
        return self.unit("sockets.target.wants")

    @property
    def sudoers(self) -> Path:
        """The deploy user's sudo rule."""
        return self.p("/etc/sudoers.d/siteops-deploy")

    @property
    def sshd_conf(self) -> Path:
        return self.p("/etc/ssh/sshd_config.d/00-siteops.conf")

    @property
    def tenant_keys(self) -> Path:
        """The deploy user's tenant keys, each with its forced command (sshd reads
        it after ~/.ssh/authorized_keys: AuthorizedKeysFile in sshd_conf)."""
        return self.p("/etc/ssh/siteops-keys/deploy")

    @property
    def operator_keys(self) -> Path:
        """Fingerprints of the keys bootstrap left in deploy's authorized_keys."""
        return self.etc / "operator-keys"

    def key_used(self, fingerprint: str) -> Path:
        """A file whose mtime is the last use of a tenant key."""
        return self.state / "keys-used" / hashlib.sha256(fingerprint.encode()).hexdigest()[:32]

    @property
    def fail2ban_jail(self) -> Path:
        return self.p("/etc/fail2ban/jail.d/siteops.local")

    @property
    def nginx_pid(self) -> Path:
        return self.p("/run/nginx.pid")

    @property
    def acme_root(self) -> Path:
        """The webroot of every site's /.well-known/acme-challenge/."""
        return self.p("/var/www/siteops-acme")

    def placeholder(self, name: str) -> Path:
        """The page a site serves until its first deploy."""
        return self.p("/var/www/siteops-placeholder") / name

    @property
    def backup_repository(self) -> Path:
        """restic's repository unless /etc/siteops/backup.env names another."""
        return self.p("/var/backups/siteops")

    @property
    def restic_cache(self) -> Path:
        return self.p("/var/cache/siteops/restic")

    @property
    def sysctl_conf(self) -> Path:
        return self.p("/etc/sysctl.d/90-siteops.conf")

    @property
    def shared_redis_conf(self) -> Path:
        """The distribution's Redis (stopped: sites never share one)."""
        return self.p("/etc/redis/redis.conf")

    @property
    def os_release(self) -> Path:
        return self.p("/etc/os-release")

    def postgres_conf(self, version: str, cluster: str) -> Path:
        return self.p(f"/etc/postgresql/{version}/{cluster}")

    def authorized_keys(self, home: str) -> Path:
        return self.p(home) / ".ssh" / "authorized_keys"

    @property
    def cgroup_root(self) -> Path:
        """The cgroup file system's root (cgroup v2, or v1's hierarchies below it)."""
        return self.p("/sys/fs/cgroup")

    def cgroup(self, slice_: str) -> Path:
        """A site slice's cgroup (cgroup v2)."""
        return self.cgroup_root / "siteops.slice" / slice_

    def mirror(self, name: str) -> Path:
        """The cached bare mirror of a site's repository (root only)."""
        return self.state / "mirrors" / f"{name}.git"

    def deploy_key(self, name: str) -> Path:
        """SSH key deploy uses to fetch a site's private repository (root only)."""
        return self.etc / "deploy-keys" / name

    @property
    def log_dir(self) -> Path:
        return self.p("/var/log/siteops")

    @property
    def sleep_default(self) -> Path:
        """The host's default --sleep-after for new sites (bootstrap --sleep-after)."""
        return self.etc / "sleep-after"

    @property
    def php_fpm_conf(self) -> Path:
        """The PHP-FPM configuration every php site's instances start with."""
        return self.etc / "php-fpm.conf"

    @property
    def rsyslog_d(self) -> Path:
        return self.p("/etc/rsyslog.d")

    @property
    def rsyslog_shared(self) -> Path:
        """What every site's log drain uses (drains.py)."""
        return self.rsyslog_d / "50-siteops.conf"

    def rsyslog_site(self, name: str) -> Path:
        """Site name's log drains, for rsyslog."""
        return self.rsyslog_d / f"60-siteops-{name}.conf"

    @property
    def drain_stats(self) -> Path:
        """rsyslog's statistics, a JSON record per queue and action a minute."""
        return self.log_dir / "drains-stats.log"

    @property
    def logrotate_drains(self) -> Path:
        return self.p("/etc/logrotate.d") / "siteops-log-drains"  # no site is named with a -

    @property
    def drains_dir(self) -> Path:
        """The CA certificates drains verify their collectors with."""
        return self.etc / "drains"

    @property
    def actions_log(self) -> Path:
        """One JSON line per command run (cli) and per tenant request (tenant)."""
        return self.log_dir / "actions.jsonl"

    @property
    def install_dir(self) -> Path:
        return self.p("/opt/siteops")

    @property
    def door_program(self) -> Path:
        """What a sleeping site's doors run (door.py), readable by every site."""
        return self.install_dir / "lib" / "siteops" / "door.py"

    # Sites.
    @property
    def sites(self) -> Path:
        return self.p("/srv/sites")

    def site(self, name: str) -> Path:
        return self.sites / name

    @functools.lru_cache(maxsize=4096)
    def of(self, name: str) -> "SitePaths":
        """Every path of site name's tree (see layout.py for owners and modes)."""
        return SitePaths(self.site(name))

    # nginx.
    @property
    def nginx(self) -> Path:
        return self.p("/etc/nginx")

    def nginx_site(self, name: str) -> Path:
        return self.nginx / "sites-available" / f"{name}.conf"

    def nginx_enabled(self, name: str) -> Path:
        return self.nginx / "sites-enabled" / f"{name}.conf"

    def nginx_move_secret(self, name: str) -> Path:
        """During a move, root-only: the forward's secret header (on the source)
        or the check of it (on the target), included by the site's file."""
        return self.nginx / "siteops-moves" / f"{name}.conf"

    # systemd, logrotate, redis.
    def unit(self, unit: str) -> Path:
        return self.p("/etc/systemd/system") / unit

    def dropin(self, unit: str) -> Path:
        """The drop-in that pins an instance's release and command."""
        return self.unit(unit + ".d") / "siteops-release.conf"

    def logrotate(self, name: str) -> Path:
        return self.p("/etc/logrotate.d") / f"siteops-{name}"

    def redis_conf(self, name: str) -> Path:
        return self.etc / "redis" / f"{name}.conf"


@dataclass(frozen=True)
class SitePaths:
    """A site's tree under /srv/sites/NAME."""
    root: Path

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    def release(self, rid: str) -> Path:
        return self.releases / rid

    @property
    def current(self) -> Path:
        return self.root / "current"

    @functools.cached_property  # the parent of most of its paths
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def env(self) -> Path:
        return self.shared / ".env"

    @functools.cached_property
    def logs(self) -> Path:
        return self.shared / "logs"

    # A site's log files, each named here only (logs NAME reads them all).
    @property
    def nginx_access_log(self) -> Path:
        return self.logs / "nginx-access.log"

    @property
    def nginx_error_log(self) -> Path:
        return self.logs / "nginx-error.log"

    def app_log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def app_error_log(self, component: str) -> Path:
        return self.logs / f"{component}-error.log"

    def worker_log(self, kind: str) -> Path:
        return self.logs / f"worker-{kind}.log"

    def job_log(self, job: str) -> Path:
        return self.logs / f"job-{job}.log"

    @property
    def redis_log(self) -> Path:
        return self.logs / "redis.log"

    @property
    def door_log(self) -> Path:
        """A sleeping site's wakes (door.py)."""
        return self.logs / "door.log"

    @property
    def uploads(self) -> Path:
        return self.shared / "uploads"

    @property
    def php_sessions(self) -> Path:
        """A php site's sessions: in uploads/, the one place its app may write
        (and that outlives a release), never served by nginx."""
        return self.uploads / ".sessions"

    @property
    def redis(self) -> Path:
        return self.shared / "redis"

    @property
    def cache(self) -> Path:
        return self.shared / "cache"

    @property
    def backups(self) -> Path:
        return self.shared / "backups"
