"""siteops.toml: what an app repository tells deploy about itself.

    runtime = "node"            # node | python | php | static | command (default: detected)
    install = "pnpm install"    # replaces the runtime's install step (optional)
    build = "pnpm run build"    # runs after install (node default: the build script)
    health_timeout = 60         # seconds the new release has to pass its health check
    static_dir = "public"       # static runtime: the directory served
    web_root = "public"         # php runtime: the directory nginx serves and PHP
                                # runs index.php from (default: public if the
                                # repository has it, else its top)

    [php]                       # php runtime: the ini settings a site may change
    memory_limit = "256M"
    upload_max_filesize = "32M" # nginx's client_max_body_size follows the larger
    post_max_size = "32M"       # of the two
    max_execution_time = 60

    release = "python manage.py migrate"  # once per deploy, after the build,
                                # before the switch (a shell command; failing stops the deploy)

    [frontend]                  # one table per component the site has
    start = "node server.js"    # the unit's command, run in the release; ${PORT} allowed
    health = "/healthz"         # GET here must answer 2xx or 3xx (default "/")

    [workers.mail]              # a process without a port, supervised by systemd
    command = "python worker.py"
    count = 2                   # instances (default 1)

    [jobs.cleanup]              # a systemd timer running in the live release
    schedule = "*-*-* 03:00:00" # systemd calendar spec (systemd.time(7))
    command = "python cleanup.py"

The file is optional: without it the runtime is detected (package.json: node,
requirements.txt: python, composer.json or index.php: php, otherwise command:
no install step) and the start
commands are the site's (add-site --start); deploy --start overrides either.
"static" must be named: it serves static_dir with Python's http.server.

Without siteops.toml a Procfile (Heroku, Dokku, piku) is read: `web` is the
start command of the site's frontend (its api if it has no frontend),
`release` the release command, every other process type a worker. `$PORT`
becomes `${PORT}`; systemd runs the commands without a shell.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from .errors import UsageError
from .model import DEFAULT_COMMANDS, Job, Worker
from .validate import COMPONENTS, InvalidInput, exec_command, process_name, start_command

FILE = "siteops.toml"
PROCFILE = "Procfile"
RUNTIMES = ("node", "python", "php", "static", "command")
TOP_KEYS = {"runtime", "install", "build", "health_timeout", "static_dir", "web_root",
            "release", "workers", "jobs", "php", *COMPONENTS}
COMPONENT_KEYS = {"start", "health"}
MAX_WORKERS = 16
# It reaches the unit's ExecStart: nothing systemd or a shell would interpret.
STATIC_DIR = re.compile(r"(?![-/])[A-Za-z0-9._/-]{1,200}")
HEALTH_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")


T = TypeVar("T")


class ManifestError(UsageError):
    """siteops.toml is not valid; the deploy stops before building anything."""


@dataclass
class Manifest:
    runtime: str | None = None
    install: str | None = None
    build: str | None = None
    health_timeout: int = 60
    static_dir: str = "public"
    web_root: str | None = None
    php: dict[str, str] = field(default_factory=dict)
    starts: dict[str, str] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=dict)
    web: str | None = None      # a Procfile's web process: the front component's start
    release: str | None = None
    workers: dict[str, Worker] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)


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
    for key in ("static_dir", "web_root"):
        if key in data:
            d = _text(key, data[key]).rstrip("/") or "."
            if not STATIC_DIR.fullmatch(d) or ".." in d.split("/"):
                raise ManifestError(f"{FILE}: {key} must be a relative path inside the "
                                    "repository: letters, digits, '.', '_', '-' and '/', not "
                                    "starting with '-' or '/', no '..'")
            setattr(m, key, d)
    if "php" in data:
        if not isinstance(data["php"], dict):
            raise ManifestError(f"{FILE}: php must be a table: [php]")
        m.php = php_settings(data["php"])
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
    if "release" in data:
        m.release = _text("release", data["release"])
    m.workers = _processes(data, "workers", {"command"}, {"count"}, _worker)
    m.jobs = _processes(data, "jobs", {"schedule", "command"}, set(), _job)
    return m


# The ini settings a site's [php] table may set, each checked by its pattern:
# sizes as PHP reads them (a number, then K, M or G), seconds as a number.
PHP_SIZE = re.compile(r"[1-9][0-9]{0,5}[KMG]?")
PHP_SETTINGS = {"memory_limit": (PHP_SIZE, "a size like 256M"),
                "upload_max_filesize": (PHP_SIZE, "a size like 32M"),
                "post_max_size": (PHP_SIZE, "a size like 32M"),
                "max_execution_time": (re.compile(r"[0-9]{1,4}"), "seconds, 0-9999")}


def php_settings(table: dict) -> dict[str, str]:
    """A [php] table's settings, as the strings php-fpm's -d takes; any other
    key is refused (disable_functions, open_basedir and the like are siteops's,
    not an app's)."""
    out = {}
    for key, value in table.items():
        if key not in PHP_SETTINGS:
            raise ManifestError(f"{FILE}: [php] {key} is not a setting a site may change "
                                f"(it may: {', '.join(PHP_SETTINGS)})")
        pattern, what = PHP_SETTINGS[key]
        text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(text, str) or not pattern.fullmatch(text):
            raise ManifestError(f"{FILE}: [php] {key} must be {what}, not {value!r}")
        out[key] = text
    return out


def _processes(data: dict, section: str, required: set[str], optional: set[str],
               check: Callable[[str, dict], T]) -> dict[str, T]:
    """[section.NAME] tables, each checked by check(where, table)."""
    tables = data.get(section, {})
    if not isinstance(tables, dict):
        raise ManifestError(f"{FILE}: {section} must be tables like [{section}.NAME]")
    out: dict[str, T] = {}
    for name, table in tables.items():
        where = f"[{section}.{name}]"
        try:
            process_name(section[:-1], name)
        except InvalidInput as exc:
            raise ManifestError(f"{FILE}: {exc}") from exc
        if (not isinstance(table, dict) or required - set(table)
                or set(table) - required - optional):
            raise ManifestError(f"{FILE}: {where} takes {', '.join(sorted(required))}"
                                + (f" and optionally {', '.join(sorted(optional))}"
                                   if optional else ""))
        out[name] = check(where, table)
    return out


def _command(where: str, value) -> str:
    try:
        return exec_command(f"{where} command", _text(f"{where} command", value))
    except InvalidInput as exc:
        raise ManifestError(f"{FILE}: {exc}") from exc


def _worker(where: str, table: dict) -> Worker:
    count = table.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_WORKERS:
        raise ManifestError(f"{FILE}: {where} count must be a number, 1-{MAX_WORKERS}")
    return Worker(_command(where, table["command"]), count)


def _job(where: str, table: dict) -> Job:
    # The schedule itself is checked with `systemd-analyze calendar` by deploy.
    return Job(_text(f"{where} schedule", table["schedule"]), _command(where, table["command"]))


def parse_procfile(text: str) -> Manifest:
    """A Procfile's processes as a manifest: web, release, and workers."""
    m = Manifest()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        kind, sep, command = line.partition(":")
        kind, command = kind.strip(), command.strip()
        if not sep or not command:
            raise ManifestError(f"{PROCFILE} line {number}: expected 'type: command'")
        if kind == "release":
            m.release = command  # run by a shell, like deploy's build steps
            continue
        command = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", r"${\1}", command)
        where = f"{PROCFILE} {kind}"
        try:
            if kind == "web":
                m.web = exec_command(f"{where} command", command)
            else:
                m.workers[process_name("process type", kind)] = Worker(
                    exec_command(f"{where} command", command))
        except InvalidInput as exc:
            raise ManifestError(f"{PROCFILE} line {number}: {exc}") from exc
    return m


def load(toml_text: str | None, procfile_text: str | None) -> Manifest:
    """The repository's siteops.toml, else its Procfile, else defaults."""
    if toml_text is None and procfile_text is not None:
        return parse_procfile(procfile_text)
    return parse(toml_text)


def detect_runtime(m: Manifest, files: set[str]) -> str:
    """The runtime the manifest names, or the one the repository's files suggest."""
    if m.runtime:
        return m.runtime
    if "package.json" in files:
        return "node"
    if "requirements.txt" in files:
        return "python"
    if "composer.json" in files or "index.php" in files:
        return "php"
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
    elif runtime == "php" and "composer.json" in files and "vendor" not in files:
        # A committed vendor/ is used as it is.
        steps.append(("install", "composer install --no-dev --optimize-autoloader "
                                 "--no-interaction --no-progress"))
    if m.build:
        steps.append(("build", m.build))
    elif runtime == "node" and _has_build_script(package_json):
        steps.append(("build", f"{'pnpm' if have_pnpm else 'npm'} run build"))
    return steps


# What a runtime's default install step reads, and what it writes into the release.
LOCKFILES = {"python": ("requirements.txt",), "php": ("composer.json", "composer.lock"),
             "node": ("package.json", "package-lock.json", "npm-shrinkwrap.json",
                      "pnpm-lock.yaml", "yarn.lock")}
DEPS_DIR = {"python": ".venv", "node": "node_modules", "php": "vendor"}
INSTALL_STEPS = ("venv", "install")


def deps_key(m: Manifest, runtime: str, steps: list[tuple[str, str]],
             lockfiles: dict[str, str], toolchain: str) -> str | None:
    """What a release's installed dependencies depend on, hashed: the install
    commands, the lockfiles' contents and the runtime's version. None when
    siteops does not know what the install writes (a custom install)."""
    if m.install or runtime not in DEPS_DIR:
        return None
    h = hashlib.sha256()
    for part in ([runtime, toolchain] + [c for label, c in steps if label in INSTALL_STEPS]
                 + [f"{name}\0{text}" for name, text in sorted(lockfiles.items())]):
        h.update(part.encode() + b"\0\0")
    return h.hexdigest()[:32]


def reuse_steps(runtime: str, steps: list[tuple[str, str]], donor: str,
                release: str) -> list[tuple[str, str]]:
    """steps with the install replaced by a copy of the donor release's
    dependencies (its own copy: nothing writable is shared with a live
    release; absolute paths, deploy runs it as the site user). A venv's
    scripts name their interpreter by absolute path, so those paths are
    rewritten to the new release."""
    deps = DEPS_DIR[runtime]
    new = f"{release}/{deps}"
    copy = f"cp -a --reflink=auto -- {donor}/{deps} {new}"
    if runtime == "python":
        copy += (f" && {{ grep -rlIF -- {donor}/ {new}/bin {new}/pyvenv.cfg || true; }}"
                 f" | xargs -r sed -i -e 's|{donor}/|{release}/|g'")
    return [("reuse", copy)] + [s for s in steps if s[0] not in INSTALL_STEPS]


def package_scripts(package_json: str | None) -> set[str]:
    """The script names of a package.json (none when it is missing or malformed)."""
    try:
        scripts = json.loads(package_json or "{}").get("scripts") or {}
    except (json.JSONDecodeError, AttributeError):
        return set()
    return set(scripts) if isinstance(scripts, dict) else set()


def _has_build_script(package_json: str | None) -> bool:
    return "build" in package_scripts(package_json)


# The package.json script each component's default command (model.DEFAULT_COMMANDS) runs.
DEFAULT_SCRIPTS = {"frontend": "start", "api": "start:api"}


def start_commands(m: Manifest, runtime: str, components: list[str], registered: dict[str, str],
                   overrides: dict[str, str], scripts: frozenset[str] | set[str] = frozenset(),
                   required: bool = False, php_fpm: str | None = None
                   ) -> tuple[dict[str, str], list[str]]:
    """What the app declares it runs: each component's start command from
    --start, then siteops.toml, then the Procfile's web (the front component),
    then the site's own (add-site --start), then what its runtime starts by
    itself (node: the default `pnpm start` / `pnpm run start:api` when
    package.json has that script; static: static_dir, served by the front
    component). A php site's front component is always its PHP-FPM, php_fpm
    (siteops's command: nginx speaks FastCGI to it); a start given for it is
    refused. Returns (commands, components not started). A component
    none of these gives a command is not started, unless the operator chose
    the site's components (required) or none would run: then ManifestError
    naming the ways to give it one."""
    static = f"python3 -m http.server --bind 127.0.0.1 --directory {m.static_dir} ${{PORT}}"
    front = "frontend" if "frontend" in components else "api"
    commands, skipped = {}, []
    if runtime == "php":
        given = overrides.get(front) or m.starts.get(front) or m.web
        if given:
            raise ManifestError(f"a php site's {front} is its PHP-FPM, which siteops runs: "
                                f"no start command for it ({given!r})")
        assert php_fpm is not None, "the php runtime needs its PHP-FPM command"
    for c in components:
        if runtime == "php" and c == front and php_fpm:
            commands[c] = php_fpm
            continue
        own = registered.get(c)
        explicit = own if own and own != DEFAULT_COMMANDS.get(c) else None
        if runtime == "static":
            fallback = static if c == front else explicit
        else:
            fallback = explicit or (DEFAULT_COMMANDS[c] if runtime == "node"
                                    and DEFAULT_SCRIPTS[c] in scripts else None)
        command = overrides.get(c) or m.starts.get(c) or (m.web if c == front else None) \
            or fallback
        if command:
            commands[c] = command
        else:
            skipped.append(c)
    if skipped and (required or not commands):
        c = skipped[0]
        raise ManifestError(
            f"no start command for component {c}: give it one in {FILE} ([{c}] start = "
            f"\"...\"), with `deploy --start {c}=COMMAND`, or with `add-site NAME --start "
            f"{c}=COMMAND`" + (" (a Procfile's web process starts the front component)"
                               if c == front else "")
            + (f"; or take {c} off the site (add-site NAME --components ...)"
               if len(components) > 1 else ""))
    return commands, skipped
