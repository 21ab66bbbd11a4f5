"""Test doubles for the unit tier: a recording fake runner and dry-run hosts
over a temporary root."""

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from siteops.paths import Paths  # noqa: E402
from siteops.system import Host, Result  # noqa: E402

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


class FakeRunner:
    """Records every argv; answers from (argv prefix, code, stdout, stderr) rules,
    first match wins, default success with no output."""

    def __init__(self, rules=()):
        self.rules = list(rules)
        self.calls = []

    def __call__(self, argv, input=None, timeout=None, env=None, stream=None):
        self.calls.append(list(argv))
        result = Result(list(argv), 0, "", "")
        for prefix, code, out, *err in self.rules:
            if list(argv[:len(prefix)]) == list(prefix) and (
                    not err[1:] or err[1] in (input or "")):
                result = Result(list(argv), code, out, err[0] if err else "")
                break
        if stream:
            for line in result.out.splitlines():
                stream(line)
        return result





def make_host(root, rules=(), dry_run=True):
    runner = FakeRunner(rules)
    host = Host(runner=runner, dry_run=dry_run, out=io.StringIO(), paths=Paths(root))
    return host, runner


def planned_commands(host):
    """The commands a host ran or would run, as shell-like strings."""
    return [" ".join(a[1]) for a in host.actions if a[0] == "run"]
