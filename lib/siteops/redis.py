"""Redis: the distribution's shared instance locked to loopback and stopped,
and one instance per site on a port of the site's block.

Why one instance per site rather than ACL users on a shared one: a site gets
its own memory limit, its own persistence file and FLUSHALL cannot touch
another site's keys; a crash or an eviction storm stays inside one site. The
cost is a few MB of memory per site."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

from . import systemd
from .model import Site
from .host import Host
from .templates import render

SHARED_SETTINGS = {"bind": "127.0.0.1 -::1", "protected-mode": "yes"}
DEFAULT_MAXMEMORY = "64mb"


def set_directives(text: str, settings: dict[str, str]) -> str:
    """Return a redis.conf text with each active directive set to the given value
    (comments untouched; a directive not yet present is appended)."""
    for key, value in settings.items():
        pattern = re.compile(rf"^[ \t]*{re.escape(key)}[ \t].*$", re.M)
        text, n = pattern.subn(f"{key} {value}", text)
        if n == 0:
            text = text.rstrip("\n") + f"\n{key} {value}\n"
    return text


def ensure_shared(host: Host) -> None:
    """Bind the shared instance to loopback, protected; stop it: sites never share one."""
    path = host.paths.shared_redis_conf
    with host.step("redis shared instance (loopback, protected, disabled)"):
        current = host.read(path)
        if current is not None:
            host.write(path, set_directives(current, SHARED_SETTINGS), 0o640, "redis", "redis")
        if systemd.is_enabled(host, "redis-server") or systemd.is_active(host, "redis-server"):
            host.run(["systemctl", "disable", "--now", "redis-server"])


def site_conf(host: Host, site: Site, password: str) -> str:
    name = site.name
    return render("redis/site.conf", name=name, port=site.ports["redis"], password=password,
                  dir=host.paths.of(name).redis,
                  maxmemory=site.redis_maxmemory or DEFAULT_MAXMEMORY)


def ensure_site_conf(host: Host, site: Site, password: str) -> bool:
    """Write the site's redis.conf (root:site 0640: it holds the password)."""
    name = site.name
    host.ensure_dir(host.paths.redis_conf(name).parent, 0o755)
    return host.write(host.paths.redis_conf(name), site_conf(host, site, password),
                      0o640, "root", name)


def save(host: Host, site: Site, url: str) -> None:
    """Have the site's Redis write a fresh RDB (SAVE) to shared/redis/dump.rdb;
    the password goes in the environment (REDISCLI_AUTH), never argv."""
    password = urlsplit(url).password or ""
    host.run(["redis-cli", "-h", "127.0.0.1", "-p", str(site.ports["redis"]),
              "--no-auth-warning", "SAVE"], env={"REDISCLI_AUTH": password},
             secrets=[password], note="REDISCLI_AUTH from the site's .env")


def accepts(port: int, user: str, password: str, timeout: float = 2) -> bool | None:
    """True if the Redis on 127.0.0.1:port takes user and password (AUTH), False
    if it refuses them, None if nothing answers there. Spoken directly (RESP),
    so the password is in no process's argv or environment."""
    def bulk(text: str) -> bytes:
        data = text.encode()
        return b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"*3\r\n" + bulk("AUTH") + bulk(user) + bulk(password))
            reply = conn.recv(512)
    except OSError:
        return None
    return None if not reply else reply.startswith(b"+OK")
