"""A site's units and ports, pure: which ports a slot holds, which units
run a release, which run the site now (live), which were kept warm, which are
workers. The registry stores sites; systemd renders and runs these units;
instances switches between them.

Ports come in blocks of ten per slot k (the reference's plan): frontend
3100+10k.., API 4000+10k.., Redis and extra services 5000+10k..; a
component's instances take the ports of its block, the live one at
site.live.offset. A component template NAME-COMPONENT@PORT.service runs each
web instance; NAME-worker@TYPE-N-OFFSET.service each worker, beside the web
instances at the same offset.

    >>> ports_for(2, ["frontend"])
    {'frontend': 3120, 'redis': 5020}
"""

from __future__ import annotations

from .errors import SiteopsError
from .model import Release, Site, Worker

MAX_SLOTS = 90  # frontend ports 3100..3999
FRONTEND_BASE, API_BASE, EXTRA_BASE, BLOCK = 3100, 4000, 5000, 10
BLOCK_BASES = (FRONTEND_BASE, API_BASE, EXTRA_BASE)


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
    for offset in sorted(range(BLOCK), key=lambda o: (o != preferred, o)):
        if offset != live and not any(site.ports[c] + offset in busy for c in site.components):
            return offset
    raise SiteopsError(f"site {site.name}: every port of its blocks is in use; "
                       "free one (ss -ltnp) and try again")


def block_ranges(slot: int) -> list[tuple[int, int]]:
    """(first, last) port of each of slot k's three blocks of ten."""
    return [(base + BLOCK * slot, base + BLOCK * slot + BLOCK - 1) for base in BLOCK_BASES]


def block_ports(slot: int) -> list[int]:
    """Every port of slot k's three blocks of ten."""
    return [p for first, last in block_ranges(slot) for p in range(first, last + 1)]


def ports_for(slot: int, components: list[str]) -> dict[str, int]:
    """The ports a site in slot k uses: its components and its Redis."""
    bases = {"frontend": FRONTEND_BASE, "api": API_BASE}
    ports = {c: bases[c] + BLOCK * slot for c in components}
    ports["redis"] = EXTRA_BASE + BLOCK * slot
    return ports


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
    not their instances)."""
    name = site.name
    return [slice_name(name), *(app_unit(name, c) for c in site.components),
            worker_unit(name), redis_unit(name)]


def live_units(site: Site) -> list[str]:
    """The running service units of a site: its live instances, then its Redis."""
    return live_instances(site) + [redis_unit(site.name)]


def web_instances(site: Site, record: Release | None, offset: int) -> list[str]:
    """A release's web instances at port offset, one per component it runs."""
    return [instance(site.name, c, p) for c, p in instance_ports(site, offset, record).items()]


def instance_units(site: Site, record: Release, offset: int) -> list[str]:
    """A release's web instances and workers at port offset."""
    return (web_instances(site, record, offset)
            + list(worker_instances(site.name, record.workers, offset)))


def build_unit(name: str) -> str:
    return f"siteops-build-{name}.service"
