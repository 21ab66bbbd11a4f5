"""Test doubles for the unit tier: a recording fake runner and dry-run hosts
over a temporary root."""

import io
import shlex
import sys
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "lib"))

from siteops.paths import Paths  # noqa: E402
from siteops.host import Host, Result  # noqa: E402

DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'


class Rule(NamedTuple):
    """How the fake runner answers a command: the first rule whose prefix starts
    the argv (and whose stdin, if given, is in the command's input) wins."""
    prefix: list
    code: int = 0
    out: str = ""
    err: str = ""
    stdin: str | None = None


# Programs whose every run succeeds with no output: a test that executes
# changes (not a dry run) adds these after its own rules. Anything else the
# suite runs must be told to the fake runner, or the test fails.
CHANGES = [Rule([program]) for program in (
    "nginx", "systemctl", "systemd-analyze", "systemd-run", "runuser", "rm", "ln", "cp",
    "useradd", "usermod", "userdel", "groupdel", "restic", "redis-cli", "bash", "nft", "ufw",
    "visudo", "sshd", "certbot", "sysctl", "git", "chown", "logrotate", "fail2ban-client",
    "systemd-detect-virt", "curl", "ss", "apt-get", "npm", "pnpm")]


class FakeRunner:
    """Records every argv; answers from rules (Rule, or a tuple in Rule's
    order), first match wins. A command no rule matches fails the test: the
    fake never pretends a command it was not told about succeeded."""

    def __init__(self, rules=()):
        self.rules = [Rule(*r) for r in rules]
        self.calls = []

    def __call__(self, argv, input=None, timeout=None, env=None, stream=None):
        self.calls.append(list(argv))
        for rule in self.rules:
            if list(argv[:len(rule.prefix)]) == list(rule.prefix) and (
                    rule.stdin is None or rule.stdin in (input or "")):
                result = Result(list(argv), rule.code, rule.out, rule.err)
                break
        else:
            raise AssertionError(f"the fake runner was not told about: {argv}")
        if stream:
            for line in result.out.splitlines():
                stream(line)
        return result


def make_host(root, rules=(), dry_run=True):
    runner = FakeRunner(rules)
    host = Host(runner=runner, dry_run=dry_run, out=io.StringIO(), paths=Paths(root))
    return host, runner


def planned_commands(host):
    """The commands a host ran or would run, each as shlex.join quotes it."""
    return [shlex.join(a.argv) for a in host.actions if a.kind == "run"]
