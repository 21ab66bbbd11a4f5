"""A site's units and ports, pure: which ports a slot holds, which units
run a release, which run the site now (live), which were kept warm, which are
workers. The registry stores sites; systemd renders and runs these units;
instances switches between them.

Ports come in blocks of ten per slot k. The first 90 slots keep the
reference's plan: frontend 3100+10k.., API 4000+10k.., Redis and extra
services 5000+10k... Slots 90 and up continue in a second range, their three
blocks side by side: slot 90+j holds 10000+30j.. (frontend), 10010+30j..
(API), 10020+30j.. (Redis and extra), up to slot 1089 at 39970-39999;
bootstrap reserves 10000-39999 from the kernel's ephemeral ports
(net.ipv4.ip_local_reserved_ports), so no outgoing connection takes one. A
component's instances take the ports of its block, the live one at
site.live.offset. A component template NAME-COMPONENT@PORT.service runs each
web instance; NAME-worker@TYPE-N-OFFSET.service each worker, beside the web
instances at the same offset.

Instances take offsets 0-7. A site that sleeps when idle is reached through
doors: the door NAME-door@PORT.socket of the instance on PORT listens on
offset 8 or 9 of the same block (by the instance's offset's parity, so a
release and the next have different doors), held by systemd while the site
sleeps; its first connection starts NAME-door@PORT.service, which starts
the instance and proxies to it until the site has been idle long enough.

    >>> ports_for(2, ["frontend"])
    {'frontend': 3120, 'redis': 5020}
    >>> ports_for(91, ["frontend", "api"])
    {'frontend': 10030, 'api': 10040, 'redis': 10050}
"""

from __future__ import annotations

from .errors import SiteopsError
from .model import Release, Site, Worker

FRONTEND_BASE, API_BASE, EXTRA_BASE, BLOCK = 3100, 4000, 5000, 10
INSTANCE_OFFSETS = 8              # instances on offsets 0-7 of a block
DOOR_OFFSETS = (8, 9)             # a sleeping site's doors, by the instance offset's parity
REFERENCE_SLOTS = 90              # frontend ports 3100..3999
SECOND_RANGE = (10000, 39999)     # slots 90.., three blocks each
MAX_SLOTS = REFERENCE_SLOTS + (SECOND_RANGE[1] - SECOND_RANGE[0] + 1) // (3 * BLOCK)


def block_bases(slot: int) -> tuple[int, int, int]:
    """The first port of slot k's frontend, API and extra blocks."""
    if not 0 <= slot < MAX_SLOTS:
        raise ValueError(f"slot {slot} is outside 0..{MAX_SLOTS - 1}")
    if slot < REFERENCE_SLOTS:
        return FRONTEND_BASE + BLOCK * slot, API_BASE + BLOCK * slot, EXTRA_BASE + BLOCK * slot
    first = SECOND_RANGE[0] + 3 * BLOCK * (slot - REFERENCE_SLOTS)
    return first, first + BLOCK, first + 2 * BLOCK


def upstream_ports(site: Site) -> dict[str, int] | None:
    """The ports nginx sends each component's requests to: its live instance's,
    or its door's when the live release is reached through doors."""
    ports = live_ports(site)
    if ports is None or site.live is None or not site.live.doors:
        return ports
    return {c: door_port(p, site.live.offset) for c, p in ports.items()}


def door_port(port: int, offset: int) -> int:
    """The port the door of the instance on port (at offset) listens on."""
    return port - offset + DOOR_OFFSETS[offset % 2]


def door(site: str, port: int) -> str:
    """The door socket of a sleeping site's instance on port; its service has
    the same name (.service)."""
    return f"{site}-door@{port}.socket"


def door_service(socket: str) -> str:
    return socket.removesuffix(".socket") + ".service"


def doors(site: Site, record: Release | None, offset: int) -> dict[str, int]:
    """{door socket: the port it listens on} of a release's instances at offset."""
    return {door(site.name, p): door_port(p, offset)
            for p in instance_ports(site, offset, record).values()}


def live_doors(site: Site) -> list[str]:
    """The door sockets of the live release, if it is reached through doors."""
    if not site.live or not site.live.doors:
        return []
    return list(doors(site, site.releases.get(site.live.release), site.live.offset))


def sleeps(site: Site) -> bool:
    """Whether the site sleeps: its live release is reached through doors,
    or, before its first deploy, it is set to sleep (its Redis then runs only
    while something needs it)."""
    return site.live.doors if site.live else site.sleep_after is not None


def always_on(site: Site) -> list[str]:
    """What runs at all times (and is started at boot): Redis and the live
    instances, or, for a site that sleeps, only the live release's doors."""
    if sleeps(site):
        return live_doors(site)
    return [redis_unit(site.name), *live_instances(site)]


def live_ports(site: Site) -> dict[str, int] | None:
    """Ports the live instance of each component it runs listens on, or None
    before the first deploy. A component's instances run on ports of its block
    of ten; site.live.offset says which one serves."""
    if not site.live:
        return None
    return instance_ports(site, site.live.offset, site.releases.get(site.live.release))


def served(site: Site, record: Release | None) -> list[str]:
    """The components a release runs: those it has a start command for (the
    app declares what it runs; a site's other components are not started)."""
    if record is None or not record.commands:  # recorded before deploys chose: all
        return list(site.components)
    return [c for c in site.components if c in record.commands]


def instance_ports(site: Site, offset: int, record: Release | None = None) -> dict[str, int]:
    """The port of each component's instance at offset in its block (only the
    components record runs, when given)."""
    return {c: site.ports[c] + offset for c in served(site, record)}


def spare_offset(site: Site, busy: set[int] | frozenset = frozenset()) -> int:
    """Where the next release starts: the first port of each block when nothing
    is live, else the one beside the live port (3101 when 3100 serves, and
    back); if something else holds those (busy), the next free offset of the
    block, so a port held by another process cannot block a deploy."""
    live = site.live.offset if site.live else None
    preferred = 0 if live is None else 1 - live if live in (0, 1) else 0
    # Doors take their port by the offset's parity: the next release's differ.
    parity = site.live.offset % 2 if site.live and site.live.doors else None
    for offset in sorted(range(INSTANCE_OFFSETS), key=lambda o: (o != preferred, o)):
        if offset != live and offset % 2 != parity \
                and not any(site.ports[c] + offset in busy for c in site.components):
            return offset
    raise SiteopsError(f"site {site.name}: every port of its blocks is in use; "
                       "free one (ss -ltnp) and try again")


def block_ranges(slot: int) -> list[tuple[int, int]]:
    """(first, last) port of each of slot k's three blocks of ten."""
    return [(base, base + BLOCK - 1) for base in block_bases(slot)]


def block_ports(slot: int) -> list[int]:
    """Every port of slot k's three blocks of ten."""
    return [p for first, last in block_ranges(slot) for p in range(first, last + 1)]


def ports_for(slot: int, components: list[str]) -> dict[str, int]:
    """The ports a site in slot k uses: its components and its Redis."""
    frontend, api, extra = block_bases(slot)
    bases = {"frontend": frontend, "api": api}
    return {**{c: bases[c] for c in components}, "redis": extra}


def slice_name(site: str) -> str:
    # The '-' makes systemd nest it under siteops.slice.
    return f"siteops-{site}.slice"


def app_unit(site: str, component: str) -> str:
    """The template unit of a component."""
    return f"{site}-{component}@.service"


def instance(site: str, component: str, port: int) -> str:
    """The instance of a component's template listening on port."""
    return f"{site}-{component}@{port}.service"


def legacy_unit(site: str, component: str) -> str:
    """The plain unit name siteops used before blue/green deploys."""
    return f"{site}-{component}.service"


def redis_unit(site: str) -> str:
    return f"{site}-redis.service"


def worker_unit(site: str) -> str:
    """The template unit of the site's workers."""
    return f"{site}-worker@.service"


def worker_instances(site: str, workers: dict[str, Worker], offset: int) -> dict[str, str]:
    """{instance: worker type} of a release's workers started with its web
    instances at port offset (TYPE-N-OFFSET: the next release's workers run
    beside them at another offset)."""
    return {f"{site}-worker@{kind}-{i}-{offset}.service": kind
            for kind, spec in sorted(workers.items()) for i in range(1, spec.count + 1)}


def live_workers(site: Site) -> dict[str, str]:
    """{instance: worker type} of the live release's workers."""
    if site.live is None or site.live.release not in site.releases:
        return {}
    return worker_instances(site.name, site.releases[site.live.release].workers, site.live.offset)


def job_units(site: str, job: str) -> tuple[str, str]:
    return f"{site}-job-{job}.service", f"{site}-job-{job}.timer"


def live_web(site: Site) -> list[str]:
    """The live release's web instances (none before the first deploy)."""
    if not site.live:
        return []
    return web_instances(site, site.releases.get(site.live.release), site.live.offset)


def live_instances(site: Site, held: bool = True) -> list[str]:
    """The instances that run the site now, workers included (none before its
    first deploy; no workers while the site is held, unless held=False)."""
    workers = [] if site.held and held else list(live_workers(site))
    return live_web(site) + workers


def warm_instances(site: Site) -> list[str]:
    """The web instances a switch kept running for a quick rollback to their
    release (deploy or rollback --keep-warm); their workers are not kept."""
    record = site.releases.get(site.warm.release) if site.warm else None
    if record is None or site.warm is None:
        return []
    return web_instances(site, record, site.warm.offset)


def template_units(site: Site) -> list[str]:
    """The unit files siteops writes for the site (its slice and templates,
    not their instances; the doors' only for a site that sleeps)."""
    name = site.name
    sleeps = [door_template(name), door_service(door_template(name))] \
        if site.sleep_after is not None else []
    return [slice_name(name), *(app_unit(name, c) for c in site.components),
            worker_unit(name), redis_unit(name), *sleeps]


def door_template(site: str) -> str:
    return f"{site}-door@.socket"


def live_units(site: Site) -> list[str]:
    """The units that run a site: its live instances, then its Redis, then
    the live release's doors (a sleeping site's)."""
    return live_instances(site) + [redis_unit(site.name)] + live_door_units(site)


def asleep_allowed(site: Site) -> list[str]:
    """The units of a sleeping site that may be stopped (asleep) or running."""
    if not sleeps(site):
        return []
    return live_instances(site) + [redis_unit(site.name)]


def live_door_units(site: Site) -> list[str]:
    """The live release's door sockets and services (a sleeping site's)."""
    if not site.live or not site.live.doors:
        return []
    return release_doors(site, site.releases.get(site.live.release), site.live.offset)


def release_doors(site: Site, record: Release | None, offset: int) -> list[str]:
    """A release's door sockets and their services, for a site that sleeps."""
    sockets = list(doors(site, record, offset))
    return sockets + [door_service(s) for s in sockets]


def web_instances(site: Site, record: Release | None, offset: int) -> list[str]:
    """A release's web instances at port offset, one per component it runs."""
    return [instance(site.name, c, p) for c, p in instance_ports(site, offset, record).items()]


def instance_units(site: Site, record: Release, offset: int) -> list[str]:
    """A release's web instances and workers at port offset."""
    return (web_instances(site, record, offset)
            + list(worker_instances(site.name, record.workers, offset)))


def build_unit(name: str) -> str:
    return f"siteops-build-{name}.service"
