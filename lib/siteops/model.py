"""The registry's types: a Site with its Releases and the Live one.

JSON exists only at the edge: registry.load turns the file into these objects
(upgrading an older schema first) and registry.save turns them back. All
defaults live here, once. Keys this version does not know are kept as they
were (`extra`), so a newer siteops's file survives an older one.

Schema 2 (the file siteops writes):

    {"version": 2, "sites": {NAME: SITE}}
    SITE     name, slot, user, database, uid (null until its user exists),
             state ("provisioning" | "ready"), created, updated, domains,
             components, components_chosen (the operator named them with
             add-site --components: a deploy must start each; otherwise one
             the app declares no command for is not started), commands
             {component: command}, ports {component or
             "redis": port}, repo, keep, limits {memory_max, tasks_max,
             cpu_weight, io_weight: only those set}, redis_maxmemory, tls
             {email, hsts, staging, server, ca_bundle} or null (HTTP only),
             live {release, offset} or null, releases {id: RELEASE},
             history [EVENT]
    RELEASE  result ("building" | "ok" | "failed"), ref, repo, user, started,
             finished, commit, subject, runtime, commands, health,
             health_timeout, error, rolled_back, release_command (run before
             its switch), workers {type: {command, count}}, jobs {name:
             {schedule, command}}, deps (the key of its installed
             dependencies: a later release with the same key copies them)
    EVENT    action, release, result, user, at, and what the action adds
             (from, commit, ref, error, reason, started)

Schema 1 was the same without "version": 2's explicit keys (missing ones
took defaults where they were read); upgrade() fills them in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2
PROVISIONING, READY = "provisioning", "ready"
BUILDING, OK, FAILED = "building", "ok", "failed"
DEFAULT_KEEP = 5
DEFAULT_COMMANDS = {"frontend": "pnpm start", "api": "pnpm run start:api"}


@dataclass
class Live:
    """Which release serves, and on which port offset of the site's blocks."""
    release: str
    offset: int = 0


@dataclass
class Tls:
    """HTTPS for the site: one certificate (certbot lineage NAME) for all its
    domains, issued over HTTP-01 through nginx's ACME location."""
    email: str | None = None
    hsts: bool = False
    staging: bool = False
    server: str | None = None      # an ACME directory other than Let's Encrypt's
    ca_bundle: str | None = None   # the CA that server's HTTPS is signed with


@dataclass
class Release:
    """One build of a commit into releases/<id>, and how it ended."""
    result: str = BUILDING
    ref: str = "HEAD"
    repo: str | None = None
    user: str = "root"
    started: str | None = None
    finished: str | None = None
    commit: str | None = None
    subject: str | None = None
    runtime: str | None = None
    commands: dict[str, str] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    health_timeout: int = 60
    error: str | None = None
    rolled_back: bool = False
    release_command: str | None = None
    workers: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)
    deps: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Site:
    """A site's registry entry."""
    name: str
    slot: int
    domains: list[str] = field(default_factory=list)
    components: list[str] = field(default_factory=lambda: ["frontend", "api"])
    components_chosen: bool = False  # add-site --components: each must be started
    commands: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    user: str = ""
    database: str = ""
    uid: int | None = None
    state: str = PROVISIONING
    created: str | None = None
    updated: str | None = None
    repo: str | None = None
    keep: int = DEFAULT_KEEP
    limits: dict[str, Any] = field(default_factory=dict)
    redis_maxmemory: str | None = None
    tls: Tls | None = None
    live: Live | None = None
    releases: dict[str, Release] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user = self.user or self.name
        self.database = self.database or self.name

    def copy(self, **changes) -> "Site":
        """A deep copy with changes (the registry entry itself is left alone)."""
        return dataclasses.replace(site_from_json(site_to_json(self)), **changes)


def _split(cls, data: dict) -> tuple[dict, dict]:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    return ({k: v for k, v in data.items() if k in names},
            {k: v for k, v in data.items() if k not in names})


def release_from_json(data: dict) -> Release:
    known, extra = _split(Release, data)
    return Release(**known, extra=extra)


def release_to_json(rel: Release) -> dict:
    data = {f.name: getattr(rel, f.name) for f in dataclasses.fields(Release)
            if f.name != "extra"}
    return {**rel.extra, **data}


def site_from_json(data: dict) -> Site:
    known, extra = _split(Site, data)
    live = known.pop("live", None)
    tls = known.pop("tls", None)
    releases = known.pop("releases", None) or {}
    return Site(**known, extra=extra, live=Live(**live) if live else None,
                tls=Tls(**tls) if tls else None,
                releases={rid: release_from_json(r) for rid, r in releases.items()})


def site_to_json(site: Site) -> dict:
    data = {f.name: getattr(site, f.name) for f in dataclasses.fields(Site)
            if f.name not in ("extra", "live", "tls", "releases")}
    data["live"] = dataclasses.asdict(site.live) if site.live else None
    data["tls"] = dataclasses.asdict(site.tls) if site.tls else None
    data["releases"] = {rid: release_to_json(r) for rid, r in site.releases.items()}
    return {**site.extra, **data}


def upgrade(data: dict) -> dict:
    """A registry document of an older schema, as the current one (1 -> 2: the
    defaults made explicit; nothing is lost)."""
    if data.get("version") == 1:
        data = {**data, "version": 2,
                "sites": {n: site_to_json(site_from_json(s)) for n, s in data["sites"].items()}}
    return data
