"""PHP-FPM: a php site's web instances are PHP-FPM masters of their own, one
per instance as any runtime's process is: in the site's slice, as its user,
under the same unit hardening, on the instance's own port (127.0.0.1:PORT,
FastCGI), so the switch, doors, health checks, limits and audit are the
ones every site has. Only the site, nginx and root may connect to that port
(nftables: nftables.py), the protection a 0660 site:www-data unix socket
would give. `pm = ondemand`: an idle site's FPM runs its master only.

The distribution's PHP (8.2 on Debian 12, 8.3 on Ubuntu 24.04, 8.4 on
Debian 13), installed when the first php site is deployed; its own shared
FPM service is turned off. One pool configuration serves every site
(templates/php/fpm.conf: the port comes from the unit's environment); what
differs per site and release is on the instance's command line (-d): the
release's [php] settings and the site's session directory."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from . import packages, systemd, users
from .errors import SiteopsError
from .host import CANDIDATE, Host
from .model import Site
from .templates import render

PACKAGES = ("php-fpm", "php-cli", "php-pgsql", "php-redis", "composer")
VERSION = re.compile(r"[0-9]+\.[0-9]+")
# What the [php] settings leave at PHP's defaults, and the body nginx takes.
DEFAULT_POST_MAX = "8M"
NGINX_USER = "www-data"


def version(host: Host) -> str | None:
    """The installed PHP's major.minor, None if there is none."""
    res = host.query(["php", "-r", "echo PHP_MAJOR_VERSION, '.', PHP_MINOR_VERSION;"],
                     ok=range(256))
    out = res.out.strip()
    return out if res.code == 0 and VERSION.fullmatch(out) else None


def fpm(ver: str) -> str:
    return f"/usr/sbin/php-fpm{ver}"


def is_fpm(command: str) -> bool:
    """True for the command of a php site's FPM instance (start_command's)."""
    return command.startswith("/usr/sbin/php-fpm")


def ensure(host: Host) -> str:
    """PHP installed (the first php site), the distribution's shared FPM pool
    off, and the pool configuration written (checked with `php-fpm -t`);
    returns PHP's version."""
    with host.step(f"php ({', '.join(PACKAGES)})"):
        packages.install(host, packages.missing(host, PACKAGES))
    ver = version(host)
    if ver is None:
        if host.dry_run:
            host.say(f"{'':13}(dry run: PHP is not installed yet; its version is known after)")
            return "X.Y"
        raise SiteopsError("PHP is installed but `php -r` does not say its version")
    shared = f"php{ver}-fpm.service"
    with host.step(f"{shared} off (each php site runs its own FPM)"):
        if systemd.is_enabled(host, shared) or systemd.is_active(host, shared):
            host.run(["systemctl", "disable", "--now", "--quiet", shared])
    ensure_conf(host, ver)
    return ver


def conf_text() -> str:
    return render("php/fpm.conf")


def ensure_conf(host: Host, ver: str) -> None:
    """The pool configuration, checked with `php-fpm --test` before it is written."""
    with host.step(f"PHP-FPM pool configuration {host.paths.php_fpm_conf}"):
        host.write_checked(host.paths.php_fpm_conf, conf_text(),
                           ["env", "PORT=9", fpm(ver), "--test", "--allow-to-run-as-root",
                            "--fpm-config", CANDIDATE], "PHP-FPM configuration")


def runs_fpm(site: Site) -> bool:
    """True if the site's live release runs PHP-FPM."""
    record = site.releases.get(site.live.release) if site.live else None
    return record is not None and any(is_fpm(c) for c in record.commands.values())


def start_command(ver: str, conf: Path, settings: dict[str, str], sessions: Path) -> str:
    """The command of a php site's web instance: its FPM master in the
    foreground, logging to the unit's stderr, with the release's settings."""
    defines = {"session.save_path": str(sessions), "session.gc_probability": "1",
               **settings}
    return shlex.join([fpm(ver), "--nodaemonize", "--force-stderr", "--fpm-config", str(conf),
                       *(a for k, v in defines.items() for a in ("-d", f"{k}={v}"))])


def health_script(web_root: Path, path: str) -> Path:
    """The file nginx would run for a GET of path: the .php file it names,
    else the front controller, index.php (try_files' last resort)."""
    name = path.partition("?")[0].lstrip("/")
    return web_root / name if name.endswith(".php") else web_root / "index.php"


def size_bytes(size: str) -> int:
    """A PHP size (32M) in bytes."""
    unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
    return int(size.rstrip("KMG")) * unit


def body_size(settings: dict[str, str]) -> str:
    """nginx's client_max_body_size for a php site: the larger of its
    upload_max_filesize and post_max_size (PHP's default post size if it
    sets neither), so nginx refuses no upload PHP would take."""
    sizes = [settings[k] for k in ("upload_max_filesize", "post_max_size") if k in settings]
    return max(sizes or [DEFAULT_POST_MAX], key=size_bytes)


def prepare_release(host: Host, name: str, release: Path, web_root: str) -> None:
    """What a php release needs beyond its files: its web root there, the
    site's session directory, and nginx let through the site's root and the
    release's directory (search only: it reads the web root's files, never
    shared/). The release's ACL is set by the site's user, its owner."""
    if not host.dry_run and not (release / web_root).is_dir():
        raise SiteopsError(f"web_root {web_root!r} is not a directory of the release "
                           f"(set web_root in siteops.toml)")
    sessions = host.paths.of(name).php_sessions
    with host.step(f"PHP sessions in {sessions}"):
        if not sessions.is_dir():
            host.run(users.as_user(name, "mkdir", "-p", "-m", "0700", sessions))
    root = host.paths.site(name)
    with host.step(f"nginx may pass through {root} and the release (search only)"):
        acl = host.query(["getfacl", "--omit-header", "--absolute-names", root], ok=range(256))
        if f"user:{NGINX_USER}:--x" not in acl.out:
            host.run(["setfacl", "-m", f"u:{NGINX_USER}:--x", root])
        host.run(users.as_user(name, "setfacl", "-m", f"u:{NGINX_USER}:--x", release))
