"""nginx: the shared base (default server, snippets, real-IP list) and one
config file per site. Every change is checked with `nginx -t` before the
reload; a failing check puts all touched files back, so every other site
keeps serving."""

from __future__ import annotations

import datetime
import html
import ipaddress
import os
import re
import time
from pathlib import Path

from . import distro, php, registry, safefs, systemd, units
from .errors import PutBackFailed, SiteopsError
from .model import Site
from .paths import TEMPLATES, Paths, SitePaths
from .host import Host
from .templates import render

SERVER = Paths()  # paths as nginx's files name them, whatever root the suite writes under
CLOUDFLARE_LIST = TEMPLATES / "nginx" / "cloudflare-ips.txt"
HTTP2_DIRECTIVE = (1, 25, 1)  # `http2 on;` replaces `listen ... http2` from here on
DEFAULT_SITE = "000-siteops-default.conf"


def listen_https(version: tuple[int, ...], default: bool = False) -> str:
    """The listen lines of a TLS server block in this nginx version's syntax."""
    flag = " default_server" if default else ""
    if version >= HTTP2_DIRECTIVE:
        return (f"    listen 443 ssl{flag};\n    listen [::]:443 ssl{flag};\n    http2 on;")
    return f"    listen 443 ssl http2{flag};\n    listen [::]:443 ssl http2{flag};"


def parse_ranges(text: str) -> tuple[str, list[str]]:
    """The date and the validated CIDR ranges of a Cloudflare list file."""
    date = re.search(r"as of (\d{4}-\d{2}-\d{2})", text)
    ranges = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                ranges.append(str(ipaddress.ip_network(line)))
            except ValueError as exc:
                raise SiteopsError(f"bad range in Cloudflare list: {line!r}") from exc
    if not ranges:
        raise SiteopsError("the Cloudflare list holds no ranges")
    return (date.group(1) if date else datetime.date.today().isoformat()), ranges


def realip_snippet(list_text: str) -> str:
    date, ranges = parse_ranges(list_text)
    lines = "\n".join(f"set_real_ip_from {r};" for r in ranges)
    return render("nginx/realip.conf", date=date, ranges=lines)


def cloudflare_list(host: Host) -> str:
    """The operator's refreshed list in /etc/siteops, else the dated one shipped."""
    return host.read(host.paths.etc / "cloudflare-ips.txt") or CLOUDFLARE_LIST.read_text()


# nginx.conf lines that conf.d/siteops.conf sets instead (Debian 12's allow
# TLS 1.0 and 1.1 at http level, for every server that does not say otherwise).
MOVED_DIRECTIVES = ("ssl_protocols", "ssl_prefer_server_ciphers")
# Descriptors: the master opens every site's access and error logs, and a
# second set while it reloads; systemd's default soft limit of 1024 made its
# reloads fail near 250 sites ("Too many open files", bench/density.py). Each
# worker opens the logs too, and holds two per proxied request (client,
# upstream). Room for some 3,000 sites, within the hard limit of any host.
NOFILE = 16384
FILES_PER_SITE = 4  # the master's, while it reloads
RLIMIT_NOFILE = (f"worker_rlimit_nofile {NOFILE};  # siteops: every site's logs, and two per "
                 "connection\n")
LIMITS_DROPIN = ("# Managed by siteops: the master opens every site's logs, twice while it "
                 f"reloads.\n[Service]\nLimitNOFILE={NOFILE}\n")


def main_conf(text: str) -> str:
    """The distribution's nginx.conf with siteops's few changes: MOVED_DIRECTIVES
    commented out, worker_rlimit_nofile set. Everything else is left as it is."""
    lines = []
    for line in text.splitlines(keepends=True):
        word = line.strip().split(" ", 1)[0]
        if word in MOVED_DIRECTIVES:
            line = f"{line[:len(line) - len(line.lstrip())]}# siteops (conf.d/siteops.conf): {line.lstrip()}"
        if word == "worker_rlimit_nofile" and "# siteops:" in line:
            line = RLIMIT_NOFILE  # an earlier siteops's value (the operator's own stays)
        lines.append(line)
        if re.match(r"\s*worker_processes\s", line) and "worker_rlimit_nofile" not in text:
            lines.append(RLIMIT_NOFILE)
    return "".join(lines)


def master_pid(host: Host) -> int | None:
    master = (host.read(host.paths.nginx_pid) or "").strip()
    return int(master) if master.isdigit() else None


def open_files_limit(host: Host) -> int | None:
    """The running master's soft limit of open files (None if it is not running)."""
    pid = master_pid(host)
    limits = host.read(host.paths.p(f"/proc/{pid}/limits")) if pid else None
    m = re.search(r"^Max open files\s+(\d+)", limits or "", re.M)
    return int(m.group(1)) if m else None


def ensure_open_files(host: Host) -> None:
    """nginx may open every site's logs: LimitNOFILE in its unit's drop-in,
    and the running master given the same limit (prlimit: no restart)."""
    with host.step(f"nginx may open {NOFILE} files (every site's logs)"):
        systemd.write_units(host, {host.paths.unit("nginx.service.d") / "siteops.conf":
                                   LIMITS_DROPIN}, ["nginx.service"], "nginx's file limit")
        limit, pid = open_files_limit(host), master_pid(host)
        if pid and limit is not None and limit < NOFILE:
            host.run(["prlimit", f"--pid={pid}", f"--nofile={NOFILE}:{NOFILE}"])


def base_files(host: Host, version: tuple[int, ...]) -> dict[Path, str]:
    """The shared files bootstrap owns (and nginx.conf's edits), by path."""
    n = host.paths.nginx
    # Debian 13's nginx.conf already says `server_tokens off;`; a second one is an error.
    nginx_conf = host.read(n / "nginx.conf") or ""
    tokens = "" if re.search(r"^\s*server_tokens\s", nginx_conf, re.M) else "server_tokens off;\n"
    edited = {n / "nginx.conf": main_conf(nginx_conf)} if nginx_conf else {}
    return {**edited,
        n / "conf.d" / "siteops.conf": render("nginx/siteops.conf", server_tokens=tokens),
        n / "snippets" / "siteops-proxy.conf": render("nginx/proxy.conf"),
        n / "snippets" / "siteops-tls.conf": render("nginx/tls.conf"),
        n / "snippets" / "siteops-realip.conf": realip_snippet(cloudflare_list(host)),
        n / "sites-available" / DEFAULT_SITE: render(
            "nginx/default-server.conf", listen_https_default=listen_https(version, default=True)),
    }


def converge(host: Host, files: dict[Path, str], links: dict[Path, str] = {},
             remove: tuple[Path, ...] = ()) -> bool:
    """Write files, links and removals; `nginx -t`, then reload. True if changed.

    If `nginx -t` fails because of another site's file (edited by hand), that
    file never blocks this change: a siteops site's file is rendered again
    from the registry (its header says edits are overwritten) and said so;
    a file siteops does not manage stops the change, named, nothing changed."""
    attempts = []

    def change() -> bool:
        validation = host.validated([*files, *links, *remove], ["nginx", "-t"], "nginx")
        attempts.append(validation)
        with validation:
            for path, text in files.items():
                host.write(path, text)
            for link, target in links.items():
                host.symlink(link, target)
            for path in remove:
                host.remove(path)
        return validation.changed
    noted = (not host.dry_run and not reload_pending(host)
             and differs(host, files, links, remove))
    if noted:
        mark_reload_pending(host)
    try:
        try:
            changed = change()
        except SiteopsError as exc:
            if isinstance(exc, PutBackFailed) or not heal_other_site(
                    host, str(exc), {*files, *links, *remove}):
                raise
            changed = change()
    except BaseException:
        # The note goes only when every file is known to be back as nginx last
        # loaded it (or none was touched); else the next run checks and reloads.
        if noted and (not attempts or attempts[-1].restored):
            host.remove(pending_marker(host))
        raise
    if changed or reload_pending(host):
        if not changed:  # files checked when written; a certificate may be new since
            host.run(["nginx", "-t", "-q"])
        reload(host)
    return changed


def differs(host: Host, files: dict[Path, str], links: dict[Path, str],
            remove: tuple[Path, ...]) -> bool:
    """Whether writing files and links and removing paths would change anything."""
    return (any(host.read(path) != text for path, text in files.items())
            or any(safefs.readlink(link) != target for link, target in links.items())
            or any(safefs.lstat(path) is not None for path in remove))


def pending_marker(host: Host) -> Path:
    return host.paths.state / "nginx-reload-pending"


def mark_reload_pending(host: Host) -> None:
    """Note, before nginx's files (or a certificate) change, that nginx must
    reload: a command killed between the change and the reload leaves the note,
    and the next run reloads even though the files then look unchanged."""
    host.ensure_dir(host.paths.state, 0o700)  # as bootstrap makes it
    host.write(pending_marker(host), "a reload of nginx is due\n", 0o600)


def reload_pending(host: Host) -> bool:
    return safefs.lstat(pending_marker(host)) is not None


def heal_other_site(host: Host, error: str, ours: set[Path]) -> bool:
    """Render again the registered site whose hand-edited file made `nginx -t`
    fail (error), unless it is one of ours; True if it did. SiteopsError naming
    the file when it is not a siteops site's."""
    m = re.search(r" in (/\S+?):\d+", error)
    if not m:
        return False
    culprit = Path(m.group(1))
    n = host.paths.nginx
    if culprit in ours or culprit.parent not in (n / "sites-enabled", n / "sites-available"):
        if culprit in ours:
            return False
        raise SiteopsError(f"nginx -t fails because of {culprit}, which siteops does not "
                           f"manage: fix or remove it; nothing was changed ({error})")
    site = registry.load(host).sites.get(culprit.name.removesuffix(".conf"))
    if site is None or host.paths.nginx_site(site.name) in ours:
        raise SiteopsError(f"nginx -t fails because of {culprit}, which is no registered "
                           f"site's: fix or remove it; nothing was changed ({error})")
    host.say(f"note: {culprit} (site {site.name}) was edited by hand and fails nginx -t; "
             "rendered again from the registry")
    with host.step(f"nginx site {site.name} rendered again"):
        host.write(host.paths.nginx_site(site.name),
                   site_config(site, distro.nginx_version(host), cert_dir(host, site),
                               host.paths.of(site.name)))
    return True


def serving_workers(host: Host) -> set[str]:
    """PIDs of nginx workers that accept new connections (not shutting down)."""
    master = master_pid(host)
    if master is None:
        return set()
    proc = host.paths.p("/proc")
    children = host.read(proc / str(master) / "task" / str(master) / "children")
    if children is None:  # a kernel without CONFIG_PROC_CHILDREN
        out = host.query(["ps", "-o", "pid=,args=", "--ppid", str(master)], ok=(0, 1)).out
        titles = dict(line.strip().split(" ", 1) for line in out.splitlines() if " " in line.strip())
    else:  # read directly: reload polls this every 20 ms
        titles = {pid: process_title(proc / pid / "cmdline") for pid in children.split()}
    return {pid for pid, title in titles.items()
            if "worker process" in title and "shutting down" not in title}


RELOAD_TIMEOUT = 10  # seconds for new workers to come after a reload


def process_title(cmdline: Path) -> str:
    """A process's title from its /proc cmdline; "" once it has exited (a
    read of a process that exits after the open fails with ESRCH)."""
    try:
        return (safefs.read(cmdline) or b"").decode(errors="replace")
    except OSError:
        return ""


def reload(host: Host) -> None:
    """Reload nginx and return once only workers with the new configuration
    accept connections: `nginx -s reload` just signals the master, and until
    the old workers have begun shutting down they still take new requests.
    SiteopsError if no new worker came: the master kept its old configuration
    (what `nginx -t` cannot foresee, such as running out of descriptors), and
    the reload stays due."""
    before = serving_workers(host)
    host.run(["systemctl", "reload-or-restart", "nginx"])
    if host.dry_run or not before:
        host.remove(pending_marker(host))
        return
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        now = serving_workers(host)
        if now and not (now & before):
            host.remove(pending_marker(host))
            return
        time.sleep(0.02)
    raise SiteopsError(f"nginx kept its old configuration: no new worker within {RELOAD_TIMEOUT} s "
                       f"of the reload ({last_emergency(host) or 'its error log says nothing'}); "
                       "the reload stays due, and the next run tries again")


def last_emergency(host: Host) -> str | None:
    """The last [emerg] line of nginx's own error log (the master's reasons)."""
    fh = safefs.open_read(host.paths.p("/var/log/nginx/error.log"))
    if fh is None:
        return None
    with fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - 8192))
        lines = [line for line in fh.read().decode(errors="replace").splitlines()
                 if "[emerg]" in line]
    return lines[-1].strip() if lines else None


def ensure_base(host: Host) -> None:
    """Install the shared nginx base and refuse unknown Host headers."""
    version = distro.nginx_version(host)
    ensure_open_files(host)  # before its reload: one past the limit fails
    with host.step("nginx base (default server, snippets, Cloudflare real IP)"):
        host.ensure_dir(host.paths.acme_root, 0o755)
        n = host.paths.nginx
        converge(host, base_files(host, version),
                 links={n / "sites-enabled" / DEFAULT_SITE: f"../sites-available/{DEFAULT_SITE}"},
                 remove=(n / "sites-enabled" / "default",))
    with host.step("nginx enabled at boot"):
        if not systemd.is_enabled(host, "nginx"):
            host.run(["systemctl", "enable", "--now", "nginx"])


def cert_dir(host: Host, site: Site) -> Path | None:
    """The site's certificate directory, if a certificate is there: siteops's
    lineage (live/NAME), else one made by hand for its first domain (certbot
    --nginx -d DOMAIN, as the reference architecture does)."""
    live = host.paths.letsencrypt_live
    for d in (live / site.name, live / site.domains[0]):
        if (d / "fullchain.pem").exists():
            return d
    return None


def site_config(site: Site, version: tuple[int, ...], certs: Path | None,
                files: SitePaths) -> str:
    """Render a site's nginx file from its registry entry and live facts: the
    upstreams are the live instances' ports (their doors' for a site that
    sleeps), a placeholder before the first
    deploy. Paths of a component the live release does not run go to the one it
    does (/api/ to the frontend, or / to the api)."""
    name, ports = site.name, units.upstream_ports(site)
    components = list(ports or ())
    # A door counts idle connections as use: nginx's idle ones to it close soon.
    timeout = "    keepalive_timeout 5s;\n" if site.live and site.live.doors else ""
    upstreams = "".join(render("nginx/upstream.conf", name=name, component=c, port=ports[c],
                               keepalive_timeout=timeout)
                        for c in components) if ports else ""
    if ports:
        locations = ""
        if "api" in components and "frontend" in components:
            locations += render("nginx/location-proxy.conf", name=name, path="/api/",
                                zone="api", burst=20, component="api")
        front = "frontend" if "frontend" in components else "api"
        zone, burst = ("general", 50) if front == "frontend" else ("api", 20)
        assert site.live is not None  # ports are the live release's
        record = site.releases.get(site.live.release)
        if record and php.is_fpm(record.commands.get(front, "")):
            locations += render("nginx/location-php.conf", name=name, zone=zone, burst=burst,
                                component=front, body_size=php.body_size(record.php),
                                web_root=files.release(site.live.release) / (record.web_root
                                                                             or "."))
        else:
            locations += render("nginx/location-proxy.conf", name=name, path="/", zone=zone,
                                burst=burst, component=front)
    else:
        locations = render("nginx/location-placeholder.conf", name=name,
                           placeholder_dir=SERVER.placeholder(name))
    hsts = ('    add_header Strict-Transport-Security "max-age=63072000" always;\n'
            if certs and site.tls and site.tls.hsts else "")
    if site.move and site.move.stage == FORWARDING:
        locations = forward_locations(site, certs)
    if site.maintenance:
        # A location's add_header replaces the server's: HSTS is said again.
        locations = render("nginx/location-maintenance.conf", name=name,
                           placeholder_dir=SERVER.placeholder(name),
                           retry_after=site.maintenance.retry_after,
                           hsts=hsts.replace("    add_header", "        add_header"))
    common = dict(name=name, domains=" ".join(site.domains),
                  access_log=files.nginx_access_log, error_log=files.nginx_error_log,
                  acme_root=SERVER.acme_root,
                  trusted=trusted(site, files.nginx_access_log),
                  log_if=" if=$siteops_forward_believed" if site.forwarded_by else "")
    https = ""
    if certs:
        https = render("nginx/https-server.conf", listen_https=listen_https(version),
                       cert_dir=certs, locations=locations, hsts=hsts, **common)
        locations = render("nginx/location-redirect.conf")
    return render("nginx/site.conf", upstreams=upstreams, http_locations=locations,
                  https_server=https, **common)


FORWARDING = "forwarding"
SYSTEM_CAS = "/etc/ssl/certs/ca-certificates.crt"


def forward_locations(site: Site, certs: Path | None) -> str:
    """The site's traffic proxied to the host it moved to: over HTTPS when
    the site has a certificate (the target serves the same one, verified for
    the visitor's host name against the system's CAs: those that issued it;
    a test CA's root is installed there like any other), else HTTP."""
    assert site.move is not None
    tls = ""
    if certs:
        tls = ("        proxy_ssl_verify on;\n"
               f"        proxy_ssl_trusted_certificate {SYSTEM_CAS};\n"
               "        proxy_ssl_server_name on;\n        proxy_ssl_name $host;\n")
    scheme = "https" if certs else "http"
    return render("nginx/location-forward.conf", name=site.name, tls=tls,
                  target=f"{scheme}://{site.move.address}",
                  secret=SERVER.nginx_move_secret(site.name))


FORWARD_HEADER = "X-Siteops-Forward"


def trusted(site: Site, access_log: Path) -> str:
    """A moved site's server lines on the host it moved to: the addresses of
    the hosts that forward to it may say the visitor's address, and the check
    (in a root-only file) that refuses what comes from them without the
    move's secret: any other process on such a host could otherwise choose
    the address this host logs, rate-limits and bans by."""
    if not site.forwarded_by:
        return ""
    return ("".join(f"    set_real_ip_from {a};\n" for a in site.forwarded_by)
            + f"    include {SERVER.nginx_move_secret(site.name)};\n"
            + f"    access_log {access_log} siteops_direct "
              "if=$siteops_forward_refused;\n")


def forward_secret(secret: str) -> str:
    """The source's include: the move's secret sent with each forwarded request."""
    return (f"# Managed by siteops move-site (root-only): the move's secret.\n"
            f'proxy_set_header {FORWARD_HEADER} "{secret}";\n')


def forward_check(secret: str, sources: list[str]) -> str:
    """The target's include: a request from a forwarding host without the
    move's secret is refused (403) before its address is believed."""
    lines = ["# Managed by siteops move-site (root-only): only the forwarding host's nginx,",
             "# which sends the move's secret, may tell this site a visitor's address.",
             'set $siteops_forward_refused "";',
             "set $siteops_forward_believed 1;"]
    lines += [f'if ($realip_remote_addr = "{a}") {{ set $siteops_forward_refused 1; }}'
              for a in sources]
    lines += [f'if ($http_{FORWARD_HEADER.lower().replace("-", "_")} = "{secret}") '
              '{ set $siteops_forward_refused ""; }',
              'if ($siteops_forward_refused) { set $siteops_forward_believed ""; return 403; }']
    return "\n".join(lines) + "\n"


MAINTENANCE_PAGE = "siteops-maintenance.html"


def maintenance_page(site: Site) -> str:
    assert site.maintenance is not None
    return render("nginx/maintenance.html", name=site.name,
                  message=html.escape(site.maintenance.message or
                                      "This site is down for maintenance; back shortly."))


def ensure_site(host: Host, site: Site) -> bool:
    """Write and enable the site's nginx file, then reload; on a failed check
    nothing changes. True if nginx reloaded."""
    name = site.name
    text = site_config(site, distro.nginx_version(host), cert_dir(host, site),
                       host.paths.of(name))
    with host.step(f"nginx site {name}"):
        page = host.paths.placeholder(name) / "index.html"
        host.ensure_dir(page.parent, 0o755)
        host.write(page, render("nginx/placeholder.html", name=name))
        if site.maintenance:
            host.write(page.parent / MAINTENANCE_PAGE, maintenance_page(site))
        return converge(host, {host.paths.nginx_site(name): text},
                        links={host.paths.nginx_enabled(name): f"../sites-available/{name}.conf"})


def remove_site(host: Host, name: str) -> None:
    """Take the site's nginx file and placeholder away; reload if anything went
    (its domains then get the default server's refusal)."""
    with host.step(f"nginx site {name} removed"):
        files = (host.paths.nginx_enabled(name), host.paths.nginx_site(name))
        if not host.dry_run and differs(host, {}, {}, files):
            mark_reload_pending(host)
        gone = [host.remove(p) for p in files]
        host.remove_tree(host.paths.placeholder(name))
        if any(gone) or reload_pending(host):
            host.run(["nginx", "-t", "-q"])
            reload(host)
