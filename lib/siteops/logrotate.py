"""logrotate: per site, daily, 14 days kept, compressed; siteops's own logs weekly."""

from __future__ import annotations

from .model import Site
from .host import CANDIDATE, Host
from .templates import render


def config(host: Host, site: Site) -> str:
    """The site's logrotate file: nginx logs are reopened (no line lost); app logs
    are copied then truncated, since their writer cannot be told to reopen."""
    files = host.paths.of(site.name)
    app = [log for c in site.components for log in (files.app_log(c), files.app_error_log(c))]
    app += [files.redis_log, files.worker_log("*"), files.job_log("*")]
    return render("logrotate/site", name=site.name,
                  nginx_logs=f"{files.nginx_access_log} {files.nginx_error_log}",
                  app_logs=" ".join(map(str, app)))


def ensure_site(host: Host, site: Site) -> None:
    """Write the site's logrotate file, checked with `logrotate --debug`."""
    path = host.paths.logrotate(site.name)
    with host.step(f"logrotate {site.name}"):
        host.write_checked(path, config(host, site), ["logrotate", "--debug", CANDIDATE],
                           "logrotate")


def ensure_host(host: Host) -> None:
    """siteops's own logs rotated (the audit appends a line every hour)."""
    path = host.paths.p("/etc/logrotate.d/siteops")
    with host.step("logrotate of siteops's own logs"):
        host.write_checked(path, render("logrotate/siteops", log_dir=host.paths.log_dir),
                           ["logrotate", "--debug", CANDIDATE], "logrotate")


def remove_site(host: Host, name: str) -> None:
    with host.step(f"logrotate {name} removed"):
        host.remove(host.paths.logrotate(name))
