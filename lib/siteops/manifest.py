"""siteops.toml: what an app repository tells deploy about itself.

    runtime = "node"            # node | python | static | command (default: detected)
    install = "pnpm install"    # replaces the runtime's install step (optional)
    build = "pnpm run build"    # runs after install (node default: the build script)
    health_timeout = 60         # seconds the new release has to pass its health check
    static_dir = "public"       # static runtime: the directory served

    [frontend]                  # one table per component the site has
    start = "node server.js"    # the unit's command, run in the release; ${PORT} allowed
    health = "/healthz"         # GET here must answer 2xx or 3xx (default "/")

The file is optional: without it the runtime is detected (package.json: node,
requirements.txt: python, otherwise command: no install step) and the start
commands are the site's (add-site --start); deploy --start overrides either.
"static" must be named: it serves static_dir with Python's http.server.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

from .errors import UsageError
from .validate import COMPONENTS, InvalidInput, start_command

FILE = "siteops.toml"
RUNTIMES = ("node", "python", "static", "command")
TOP_KEYS = {"runtime", "install", "build", "health_timeout", "static_dir", *COMPONENTS}
COMPONENT_KEYS = {"start", "health"}
# It reaches the unit's ExecStart: nothing systemd or a shell would interpret.
STATIC_DIR = re.compile(r"(?![-/])[A-Za-z0-9._/-]{1,200}")
HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")


class ManifestError(UsageError):
    """siteops.toml is not valid; the deploy stops before building anything."""


@dataclass
class Manifest:
    runtime: str | None = None
    install: str | None = None
    build: str | None = None
    health_timeout: int = 60
    static_dir: str = "public"
    starts: dict[str, str] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)


def _text(where: str, value) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\0" in value:
        raise ManifestError(f"{FILE}: {where} must be a one-line string")
    return value.strip()


def parse(text: str | None) -> Manifest:
    """Parse siteops.toml (None: the repository has none)."""
    if text is None:
        return Manifest()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{FILE} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise ManifestError(f"{FILE}: unknown key {unknown[0]!r} "
                            f"(known: {', '.join(sorted(TOP_KEYS))})")
    m = Manifest()
    if "runtime" in data:
        if data["runtime"] not in RUNTIMES:
            raise ManifestError(f"{FILE}: runtime must be one of {', '.join(RUNTIMES)}")
        m.runtime = data["runtime"]
    for key in ("install", "build"):
        if key in data:
            setattr(m, key, _text(key, data[key]))
    if "health_timeout" in data:
        t = data["health_timeout"]
        if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= 600:
            raise ManifestError(f"{FILE}: health_timeout must be a number of seconds, 1-600")
        m.health_timeout = t
    if "static_dir" in data:
        d = _text("static_dir", data["static_dir"])
        if not STATIC_DIR.fullmatch(d) or ".." in d.split("/"):
            raise ManifestError(f"{FILE}: static_dir must be a relative path inside the "
                                "repository: letters, digits, '.', '_', '-' and '/', not "
                                "starting with '-' or '/', no '..'")
        m.static_dir = d
    for component in COMPONENTS:
        table = data.get(component)
        if table is None:
            continue
        if not isinstance(table, dict) or set(table) - COMPONENT_KEYS:
            raise ManifestError(f"{FILE}: [{component}] takes only start and health")
        if "start" in table:
            try:
                m.starts[component] = start_command(f"{component}={_text('start', table['start'])}")[1]
            except InvalidInput as exc:
                raise ManifestError(f"{FILE}: [{component}] start: {exc}") from exc
        if "health" in table:
            path = _text("health", table["health"])
            if not HEALTH_PATH.fullmatch(path):
                raise ManifestError(f"{FILE}: [{component}] health must be a path like /healthz")
            m.health[component] = path
    return m


def detect_runtime(m: Manifest, files: set[str]) -> str:
    """The runtime the manifest names, or the one the repository's files suggest."""
    if m.runtime:
        return m.runtime
    if "package.json" in files:
        return "node"
    if "requirements.txt" in files:
        return "python"
    return "command"


def build_steps(m: Manifest, runtime: str, files: set[str], package_json: str | None,
                have_pnpm: bool) -> list[tuple[str, str]]:
    """(label, shell command) of each step run in the release, in order."""
    steps = []
    if m.install:
        steps.append(("install", m.install))
    elif runtime == "node":
        if have_pnpm:
            # Builds need devDependencies even though .env says NODE_ENV=production.
            frozen = " --frozen-lockfile" if "pnpm-lock.yaml" in files else ""
            steps.append(("install", f"pnpm install{frozen} --prod=false"))
        else:
            npm = "npm ci" if "package-lock.json" in files else "npm install"
            steps.append(("install", f"{npm} --include=dev --no-audit --no-fund"))
    elif runtime == "python":
        steps.append(("venv", "python3 -m venv .venv"))
        if "requirements.txt" in files:
            steps.append(("install", ".venv/bin/pip install --no-input --disable-pip-version-check "
                                     "-r requirements.txt"))
    if m.build:
        steps.append(("build", m.build))
    elif runtime == "node" and _has_build_script(package_json):
        steps.append(("build", f"{'pnpm' if have_pnpm else 'npm'} run build"))
    return steps


def _has_build_script(package_json: str | None) -> bool:
    try:
        scripts = json.loads(package_json or "{}").get("scripts") or {}
    except (json.JSONDecodeError, AttributeError):
        return False
    return isinstance(scripts, dict) and "build" in scripts


def start_commands(m: Manifest, runtime: str, components: list[str], registered: dict[str, str],
                   overrides: dict[str, str]) -> dict[str, str]:
    """Each component's start command: --start, then the manifest, then the site's
    own (add-site --start); a static site serves static_dir."""
    static = f"python3 -m http.server --bind 127.0.0.1 --directory {m.static_dir} ${{PORT}}"
    commands = {}
    for c in components:
        default = static if runtime == "static" else registered.get(c)
        commands[c] = overrides.get(c) or m.starts.get(c) or default
        if not commands[c]:
            raise ManifestError(f"no start command for {c}: add [{c}] start = \"...\" to {FILE}")
    return commands
