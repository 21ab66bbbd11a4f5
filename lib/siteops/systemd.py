"""systemd: a slice per site and hardened units for its components and Redis.

Units are checked with `systemd-analyze verify` before daemon-reload; a unit
whose file changed while running is restarted so the change takes effect."""

from __future__ import annotations


from .system import Host
from .templates import render

DEFAULT_COMMANDS = {"frontend": "pnpm start", "api": "pnpm run start:api"}


def slice_name(site: str) -> str:
    # The '-' makes systemd nest it under siteops.slice.
    return f"siteops-{site}.slice"


def app_unit(site: str, component: str) -> str:
    return f"{site}-{component}.service"


def redis_unit(site: str) -> str:
    return f"{site}-redis.service"


def site_units(site: dict) -> list[str]:
    """Every service unit of a site: its components, then its Redis."""
    return [app_unit(site["name"], c) for c in site["components"]] + [redis_unit(site["name"])]


def render_units(host: Host, site: dict) -> dict[str, str]:
    """The slice and unit files of a site, by unit name."""
    name, root = site["name"], host.paths.site(site["name"])
    hardening = render("systemd/hardening.conf")
    units = {slice_name(name): render("systemd/site.slice", name=name)}
    for c in site["components"]:
        units[app_unit(name, c)] = render(
            "systemd/app.service", name=name, component=c, root=root, port=site["ports"][c],
            command=site["commands"][c], hardening=hardening)
    units[redis_unit(name)] = render(
        "systemd/redis.service", name=name, root=root, port=site["ports"]["redis"],
        conf=host.paths.redis_conf(name), hardening=hardening)
    return units


def is_active(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-active", "--quiet", unit], ok=range(256)).code == 0


def is_enabled(host: Host, unit: str) -> bool:
    return host.query(["systemctl", "is-enabled", "--quiet", unit], ok=range(256)).code == 0


def ensure_units(host: Host, site: dict) -> list[str]:
    """Write a site's unit files (verified) and reload systemd; return changed units."""
    units = render_units(host, site)
    paths = {u: host.paths.unit(u) for u in units}
    services = [str(paths[u]) for u in units if u.endswith(".service")]
    changed = []
    with host.validated(list(paths.values()), ["systemd-analyze", "verify", *services],
                        "systemd units"):
        for unit, text in units.items():
            if host.write(paths[unit], text):
                changed.append(unit)
    if changed:
        host.run(["systemctl", "daemon-reload"])
        for unit in changed:
            if unit.endswith(".service") and is_active(host, unit):
                host.run(["systemctl", "restart", unit])
    return changed


def ensure_started(host: Host, unit: str) -> None:
    """Enable unit at boot and start it now, if it is not already."""
    if not (is_enabled(host, unit) and is_active(host, unit)):
        host.run(["systemctl", "enable", "--now", unit])
