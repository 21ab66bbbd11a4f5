"""siteops.toml parsing, runtime detection and the build steps it implies."""

import pytest

from siteops import manifest
from siteops.manifest import ManifestError

FULL = """
runtime = "node"
install = "pnpm install --filter web"
build = "pnpm run build:web"
health_timeout = 20

[frontend]
start = "node web/server.js"
health = "/healthz"

[api]
start = "node api/index.js --port ${PORT}"
health = "/api/health?deep=1"
"""


def test_a_full_manifest_parses():
    m = manifest.parse(FULL)
    assert (m.runtime, m.install, m.build, m.health_timeout) == (
        "node", "pnpm install --filter web", "pnpm run build:web", 20)
    assert m.starts == {"frontend": "node web/server.js", "api": "node api/index.js --port ${PORT}"}
    assert m.health == {"frontend": "/healthz", "api": "/api/health?deep=1"}
    # Overrides replace the runtime's own steps.
    assert manifest.build_steps(m, "node", {"package.json"}, None, True) == [
        ("install", "pnpm install --filter web"), ("build", "pnpm run build:web")]


def test_no_manifest_means_defaults():
    m = manifest.parse(None)
    assert (m.runtime, m.health_timeout, m.starts, m.health) == (None, 60, {}, {})


@pytest.mark.parametrize("text, message", [
    ("runtime = 'ruby'", "runtime must be one of"),
    ("runtim = 'node'", "unknown key 'runtim'"),
    ("health_timeout = 0", "health_timeout"),
    ("health_timeout = '30'", "health_timeout"),
    ("build = ''", "build must be a one-line string"),
    ('build = "a\\nb"', "build must be a one-line string"),  # a TOML newline escape
    ("static_dir = '../etc'", "static_dir"),
    ("[frontend]\nstart = 'node $HOME/x.js'", "[frontend] start"),
    ("[frontend]\nhealth = 'healthz'", "health must be a path"),
    ("[frontend]\nport = 3000", "takes only start and health"),
    ("[worker]\nstart = 'x'", "unknown key 'worker'"),
    ("this is not toml", "not valid TOML"),
])
def test_bad_manifests_are_refused(text, message):
    with pytest.raises(ManifestError) as err:
        manifest.parse(text)
    assert message in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("files, runtime", [
    ({"package.json", "pnpm-lock.yaml"}, "node"),
    ({"requirements.txt", "app.py"}, "python"),
    ({"server.js"}, "command"),
])
def test_runtime_is_detected_from_the_files(files, runtime):
    assert manifest.detect_runtime(manifest.parse(None), files) == runtime
    assert manifest.detect_runtime(manifest.parse("runtime = 'static'"), files) == "static"


@pytest.mark.parametrize("files, package_json, pnpm, steps", [
    ({"package.json", "pnpm-lock.yaml"}, '{"scripts": {"build": "tsc"}}', True,
     [("install", "pnpm install --frozen-lockfile --prod=false"), ("build", "pnpm run build")]),
    ({"package.json"}, '{"scripts": {"start": "node x"}}', True,
     [("install", "pnpm install --prod=false")]),
    ({"package.json", "package-lock.json"}, '{"scripts": {"build": "x"}}', False,
     [("install", "npm ci --include=dev --no-audit --no-fund"), ("build", "npm run build")]),
    ({"package.json"}, "not json", False,
     [("install", "npm install --include=dev --no-audit --no-fund")]),
])
def test_node_steps_prefer_pnpm_and_a_frozen_lockfile(files, package_json, pnpm, steps):
    assert manifest.build_steps(manifest.parse(None), "node", files, package_json, pnpm) == steps


def test_python_steps_make_a_venv():
    m = manifest.parse(None)
    assert manifest.build_steps(m, "python", {"requirements.txt"}, None, True) == [
        ("venv", "python3 -m venv .venv"),
        ("install", ".venv/bin/pip install --no-input --disable-pip-version-check -r requirements.txt")]
    assert manifest.build_steps(m, "command", {"run.sh"}, None, True) == []


def test_start_commands_flags_then_manifest_then_site():
    m = manifest.parse("[api]\nstart = 'node api.js'")
    registered = {"frontend": "pnpm start", "api": "pnpm run start:api"}
    both = ["frontend", "api"]
    assert manifest.start_commands(m, "node", both, registered, {}, {"start"}) == (
        {"frontend": "pnpm start", "api": "node api.js"}, [])
    assert manifest.start_commands(m, "node", both, registered, {"api": "node other.js"},
                                   {"start"})[0]["api"] == "node other.js"
    static = manifest.start_commands(manifest.parse("static_dir = 'dist'"), "static",
                                     both, registered, {})
    assert static == ({"frontend": "python3 -m http.server --bind 127.0.0.1 --directory dist "
                                   "${PORT}"}, ["api"])
    with pytest.raises(ManifestError, match="no start command for component api: give it one "
                                            r"in siteops.toml \(\[api\] start"):
        manifest.start_commands(manifest.parse(None), "node", ["api"], {}, {})


def test_a_component_the_app_does_not_declare_is_not_started_unless_chosen():
    defaults = {"frontend": "pnpm start", "api": "pnpm run start:api"}
    web_only = manifest.load(None, "web: gunicorn app:app\nworker: python w.py\n")
    both = ["frontend", "api"]
    # add-site's default components: the Procfile's web runs, api is left out.
    assert manifest.start_commands(web_only, "python", both, defaults, {}) == (
        {"frontend": "gunicorn app:app"}, ["api"])
    # A node app without a start:api script: the same, never pnpm's error.
    assert manifest.start_commands(manifest.parse(None), "node", both, defaults, {},
                                   {"start", "build"}) == ({"frontend": "pnpm start"}, ["api"])
    # The operator named the components (add-site --components frontend,api): an error
    # naming the component and the ways to give it a command.
    with pytest.raises(ManifestError, match=r"component api: .*\[api\] start.*deploy --start "
                                            r"api=COMMAND.*add-site NAME --start api=COMMAND"):
        manifest.start_commands(web_only, "python", both, defaults, {}, required=True)
    # Given by add-site --start, it runs.
    assert manifest.start_commands(web_only, "python", both,
                                   dict(defaults, api="python api.py"), {})[1] == []
    # Nothing at all to run: an error, whatever the components.
    with pytest.raises(ManifestError, match="no start command for component frontend"):
        manifest.start_commands(manifest.parse(None), "python", both, defaults, {})
