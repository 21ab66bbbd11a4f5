"""The type checker agrees with lib/ and bin/: mypy (a test-only dependency,
installed by tests/needs) reports no error."""

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


CACHE = tempfile.TemporaryDirectory(prefix="siteops-mypy-")  # never a cache inside the suite


def mypy(*targets: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", CACHE.name, *targets],
                          cwd=ROOT, capture_output=True, text=True,
                          env={"MYPYPATH": str(ROOT / "lib"), "PATH": "/usr/bin:/bin"})


def test_mypy_is_installed():
    assert subprocess.run([sys.executable, "-m", "mypy", "--version"],
                          capture_output=True).returncode == 0, "run tests/needs"


def test_lib_has_no_type_error():
    res = mypy("-p", "siteops")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("command", sorted(p.name for p in (ROOT / "bin").iterdir()))
def test_each_command_script_has_no_type_error(command):
    res = mypy(f"bin/{command}")
    assert res.returncode == 0, res.stdout + res.stderr
