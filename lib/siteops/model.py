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
             history [EVENT], keys [KEY], maintenance {message,
             retry_after, since, by} or null (serving), move {to, address,
             stage, scheme, started, snapshot, maintenance} or null (move-site on the
             source), forwarded_by [address] (move-site on the target), held
             (workers and timers not run: a move's copy, or its source
             after the freeze)
    RELEASE  result ("building" | "ok" | "failed"), ref, repo, user, started,
             finished, commit, subject, runtime, commands, health,
             health_timeout, error, rolled_back, release_command (run before
             its switch), workers {type: {command, count}}, jobs {name:
             {schedule, command}}, deps (the key of its installed
             dependencies: a later release with the same key copies them)
    KEY      a tenant's SSH key (access add): fingerprint (SHA256:...), key
             ("TYPE BASE64"), label, role ("deploy" | "read"), added, by
    EVENT    action, release, result, user, at, and what the action adds
             (from, commit, ref, error, reason, started)

Schema 1 was the same without "version": 2's explicit keys (missing ones
took defaults where they were read); upgrade() fills them in.

Loading checks every value against its declared type (from_json): a
registry with "slot": "3" or a worker without a command is one error naming
the field (sites.shop.slot), never a KeyError later.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 2
PROVISIONING, READY = "provisioning", "ready"
BUILDING, OK, FAILED = "building", "ok", "failed"
DEFAULT_KEEP = 5
DEFAULT_COMMANDS = {"frontend": "pnpm start", "api": "pnpm run start:api"}


@dataclass
class Live:
    """Which release serves, on which port offset of the site's blocks, and
    whether nginx reaches it through doors (the site sleeps when idle)."""
    release: str
    offset: int = 0
    doors: bool = False


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
class Worker:
    """A process type without a port (siteops.toml [workers.TYPE])."""
    command: str
    count: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Job:
    """A scheduled job (siteops.toml [jobs.NAME]), run by a systemd timer."""
    schedule: str
    command: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Limits:
    """The site's own slice limits; those not set take systemd.DEFAULT_LIMITS."""
    memory_max: str | None = None
    tasks_max: int | None = None
    cpu_weight: int | None = None
    io_weight: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def set(self) -> dict[str, Any]:
        """The limits set, by name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "extra" and getattr(self, f.name) is not None}


@dataclass
class Event:
    """One entry of a site's history: a deploy, rollback, restart..."""
    action: str
    release: str | None = None
    result: str | None = None
    user: str | None = None
    at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # from, commit, ref, error, reason, ...


@dataclass
class Drain:
    """A collector the site's logs are shipped to (logs NAME drain add)."""
    url: str                      # syslog+tls://HOST:PORT, or syslog://HOST:PORT (plain)
    ca: str | None = None         # PEM of the CA the collector's certificate must chain to
    added: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Maintenance:
    """The site answers 503 with this message (maintenance NAME on)."""
    message: str = ""
    retry_after: int = 300
    since: str | None = None
    by: str | None = None


@dataclass
class Move:
    """A move of the site to another host (move-site), where it stands: copied
    (the target runs a copy; this host serves), forwarding (this host's nginx
    sends the site's traffic to the target, which serves; DNS still to move)."""
    to: str
    address: str
    stage: str = "copying"
    scheme: str = "http"
    started: str | None = None
    snapshot: str | None = None
    maintenance: Maintenance | None = None  # the operator's, set before the move: kept


DEPLOY_ROLE, READ_ROLE = "deploy", "read"


@dataclass
class Key:
    """A tenant's SSH key: acts on this site only, with its role's commands."""
    fingerprint: str
    key: str
    label: str = ""
    role: str = DEPLOY_ROLE
    added: str | None = None
    by: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
    workers: dict[str, Worker] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    deps: str | None = None
    web_root: str | None = None  # php: the directory served, in the release
    php: dict[str, str] = field(default_factory=dict)  # php: the release's [php] settings
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
    limits: Limits = field(default_factory=Limits)
    redis_maxmemory: str | None = None
    tls: Tls | None = None
    live: Live | None = None
    warm: Live | None = None  # the previous release's web instances, kept running (--keep-warm)
    releases: dict[str, Release] = field(default_factory=dict)
    history: list[Event] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)
    maintenance: Maintenance | None = None
    move: Move | None = None
    forwarded_by: list[str] = field(default_factory=list)  # hosts whose visitor address it trusts
    held: bool = False  # its workers and timers do not run (move-site)
    sleep_after: int | None = None  # seconds without a request, then it sleeps; None: never
    drains: list[Drain] = field(default_factory=list)  # where its logs are shipped
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user = self.user or self.name
        self.database = self.database or self.name

    def copy(self, **changes) -> "Site":
        """A deep copy with changes (the registry entry itself is left alone)."""
        return dataclasses.replace(site_from_json(site_to_json(self)), **changes)


class RegistryTypeError(ValueError):
    """A registry value of the wrong type: names the field, e.g. sites.shop.slot."""


def from_json(cls, data: Any, where: str):
    """An instance of the dataclass cls from JSON data, each known field
    checked against its declared type (a clear error naming the field, never
    a KeyError later); keys it does not know are kept in `extra`."""
    if not isinstance(data, dict):
        raise RegistryTypeError(f"{where} must be an object, not {_shown(data)}")
    fields, required, extra = _plan(cls)
    values = {n: check(data[n], f"{where}.{n}") for n, check in fields if n in data}
    missing = [n for n in required if n not in values]
    if missing:
        raise RegistryTypeError(f"{where}.{missing[0]} is missing")
    if extra:
        values["extra"] = {k: v for k, v in data.items() if k not in values}
    return cls(**values)


Check = typing.Callable[[Any, str], Any]


@functools.cache
def _plan(cls) -> tuple[list[tuple[str, Check]], list[str], bool]:
    """cls's fields with their checkers, the ones without a default, and
    whether it keeps unknown keys: made once per class (evaluating the type
    hints compiles every annotation, and a registry of hundreds of sites is
    checked field by field on every load)."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    return [(f.name, _checker(hints[f.name])) for f in fields], required, "extra" in hints


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong(tp: Any, value: Any, where: str) -> typing.NoReturn:
    origin = typing.get_origin(tp)
    what = {str: "a string", int: "a whole number", bool: "true or false"}.get(
        tp, "a list" if origin is list else "an object" if origin is dict else str(tp))
    raise RegistryTypeError(f"{where} must be {what}, not {_shown(value)}")


@functools.cache
def _checker(tp: Any) -> Check:
    """A function(value, where) that returns value if it has type tp
    (dataclasses made from their JSON), else raises RegistryTypeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return lambda value, where: value
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            return lambda value, where: value
        one, optional = _checker(inner[0]), type(None) in args
        return lambda value, where: None if value is None and optional else one(value, where)
    if dataclasses.is_dataclass(tp):
        return lambda value, where: from_json(tp, value, where)
    if origin is list:
        item = _checker(args[0])
        return lambda value, where: (
            [item(v, f"{where}[{i}]") for i, v in enumerate(value)]
            if isinstance(value, list) else _wrong(tp, value, where))
    if origin is dict:
        entry = _checker(args[1])
        return lambda value, where: (
            {k: entry(v, f"{where}.{k}") for k, v in value.items()}
            if isinstance(value, dict) else _wrong(tp, value, where))
    if tp is str:
        return lambda value, where: value if isinstance(value, str) else _wrong(tp, value, where)
    if tp is bool:
        return lambda value, where: value if isinstance(value, bool) else _wrong(tp, value, where)
    if tp is int:
        return lambda value, where: (value if isinstance(value, int) and not isinstance(value, bool)
                                     else _wrong(tp, value, where))
    return lambda value, where: _wrong(tp, value, where)


# Fields added after schema 2, written only when not at their default: the
# registry of a host that never uses them stays as it was, byte for byte.
LATER_FIELDS: dict[type, tuple[str, ...]] = {
    Move: ("maintenance",), Live: ("doors",), Site: ("sleep_after", "drains"),
    Release: ("web_root", "php")}


@functools.cache
def _later_defaults(cls) -> list[tuple[str, Any]]:
    """(name, JSON of its default) of cls's LATER_FIELDS (compared, never changed)."""
    return [(f.name, to_json(f.default_factory() if f.default_factory is not dataclasses.MISSING
                             else f.default))
            for f in dataclasses.fields(cls) if f.name in LATER_FIELDS.get(cls, ())]


def to_json(obj: Any) -> Any:
    """JSON data of a registry type (extra keys kept; unset limits left out)."""
    if isinstance(obj, (str, int, float, type(None))):
        return obj
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    kind: Any = type(obj)
    names = _field_names(kind)
    if names is None:
        return obj
    data = {name: to_json(getattr(obj, name)) for name in names}
    if isinstance(obj, Limits):
        data = {k: v for k, v in data.items() if v is not None}
    for name, default in _later_defaults(kind):
        if data[name] == default:
            del data[name]
    return {**getattr(obj, "extra", {}), **data}


@functools.cache
def _field_names(cls) -> list[str] | None:
    """A dataclass's fields but extra (None for any other type)."""
    if not dataclasses.is_dataclass(cls):
        return None
    return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]


def release_from_json(data: dict, where: str = "release") -> Release:
    return from_json(Release, data, where)


def release_to_json(rel: Release) -> dict:
    return to_json(rel)


def site_from_json(data: dict, where: str = "site") -> Site:
    return from_json(Site, data, where)


def site_to_json(site: Site) -> dict:
    return to_json(site)


def upgrade(data: dict) -> dict:
    """A registry document of an older schema, as the current one (1 -> 2: the
    defaults made explicit; nothing is lost)."""
    if data.get("version") == 1:
        data = {**data, "version": 2,
                "sites": {n: site_to_json(site_from_json(s)) for n, s in data["sites"].items()}}
    return data
