"""Other hosts running siteops: the inventory, their pinned SSH host keys,
and siteops commands run on them over SSH.

SSH is the only transport: no daemon, no agent, no cluster state. The
inventory (/etc/siteops/hosts.json, root-only) names each host's address,
port, user and key; its host key is pinned in siteops's own known_hosts
(/etc/siteops/fleet_known_hosts) when it is added, and every later
connection is made with StrictHostKeyChecking=yes against that file alone,
so a changed key is refused, never learnt. Commands run on another host are
siteops's own, with words siteops validated (no shell metacharacter reaches
the remote shell).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import access
from .errors import SiteopsError, UsageError
from .host import Host, Result, clean
from . import validate
from .validate import InvalidInput
from .paths import REPO

HOST_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
ADDRESS = r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]+\]"  # a name, an IPv4 or [IPv6] address
URL = re.compile(rf"ssh://(?:(?P<user>[a-z_][a-z0-9_-]{{0,31}})@)?(?P<address>{ADDRESS})"
                 r"(?::(?P<port>[0-9]{1,5}))?/?")
CONNECT_TIMEOUT = 10
SUITE_PARTS = ("bin", "lib", "templates")


class Unreachable(SiteopsError):
    """A host that did not answer, or answered with another host key."""


@dataclass(frozen=True)
class Remote:
    name: str
    user: str
    address: str
    port: int
    key: str | None = None
    fingerprint: str | None = None
    added: str | None = None

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@{self.address}" + (f":{self.port}" if self.port != 22 else "")

    @property
    def known_as(self) -> str:
        """How known_hosts names it."""
        address = self.address.strip("[]")
        return address if self.port == 22 else f"[{address}]:{self.port}"


def host_name(value: str) -> str:
    if not HOST_NAME.fullmatch(value):
        raise InvalidInput(f"invalid host name {value!r}: lowercase letters, digits and '-', "
                         "starting with a letter (at most 32)")
    return value


def address(value: str) -> str:
    """A host's address as the inventory has it (a name or an IP address)."""
    if not re.fullmatch(ADDRESS, value):
        raise InvalidInput(f"invalid address {value!r}")
    return value


def parse_url(name: str, url: str, key: str | None) -> Remote:
    m = URL.fullmatch(url)
    if not m:
        raise UsageError(f"invalid address {url!r}: expected ssh://USER@ADDRESS[:PORT]")
    port = int(m["port"] or 22)
    if not 0 < port < 65536:
        raise UsageError(f"invalid port {port}")
    return Remote(name, m["user"] or "root", m["address"], port, key)


def version(root: Path = REPO) -> str:
    """The suite's version: a digest of its files (bin, lib, templates), the
    same for a checkout and the copy bootstrap installs."""
    digest = hashlib.sha256()
    for part in SUITE_PARTS:
        for path in sorted((root / part).rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not any(p == "__pycache__" or p.startswith(".")
                                          for p in rel.parts):
                digest.update(f"{rel}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# -- the inventory ------------------------------------------------------------

def inventory_path(host: Host) -> Path:
    return host.paths.etc / "hosts.json"


def known_hosts(host: Host) -> Path:
    return host.paths.etc / "fleet_known_hosts"


def load(host: Host) -> dict[str, Remote]:
    text = host.read(inventory_path(host))
    data = json.loads(text) if text else {"hosts": {}}
    return {n: Remote(**{k: v for k, v in h.items() if k in Remote.__dataclass_fields__})
            for n, h in data.get("hosts", {}).items()}


def save(host: Host, remotes: dict[str, Remote]) -> None:
    data = {"version": 1, "hosts": {n: r.__dict__ for n, r in sorted(remotes.items())}}
    host.write(inventory_path(host), json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def get(host: Host, name: str) -> Remote:
    remote = load(host).get(name)
    if remote is None:
        raise UsageError(f"no host {name!r} in the inventory (hosts list; add one with hosts "
                         "add NAME ssh://root@ADDRESS)")
    return remote


# -- SSH ----------------------------------------------------------------------

def ssh_argv(host: Host, remote: Remote, command: list[str]) -> list[str]:
    """ssh to remote with only siteops's pinned host key and the inventory's key."""
    argv = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts(host)}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=2", "-o", "LogLevel=ERROR", "-p", str(remote.port),
            "-l", remote.user]
    if remote.key:
        argv += ["-o", "IdentitiesOnly=yes", "-i", remote.key]
    assert all(re.fullmatch(r"[A-Za-z0-9_./:=@,+-]+", w) for w in command), command
    return [*argv, "--", remote.address.strip("[]"), *command]


def scan(host: Host, remote: Remote) -> list[str]:
    """The remote's host key lines (ed25519 first), as ssh-keyscan gives them."""
    res = host.query(["ssh-keyscan", "-T", str(CONNECT_TIMEOUT), "-p", str(remote.port),
                      "-t", "ed25519,rsa", remote.address.strip("[]")], ok=range(256),
                     timeout=CONNECT_TIMEOUT + 5)
    lines = [line for line in res.out.splitlines() if line and not line.startswith("#")]
    return sorted(lines, key=lambda line: "ssh-ed25519" not in line)


def key_fingerprint(line: str) -> str:
    """The fingerprint of a known_hosts line's key."""
    return access.fingerprint(line.split()[2])


def pin(host: Host, remote: Remote, line: str) -> None:
    """Make line (from scan) the only key siteops accepts for remote."""
    words = line.split()
    others = [ln for ln in (host.read(known_hosts(host)) or "").splitlines()
              if ln.split()[:1] != [remote.known_as]]
    host.write(known_hosts(host), "".join(f"{ln}\n" for ln in
                                          [*others, f"{remote.known_as} {words[1]} {words[2]}"]),
               0o600)


def unpin(host: Host, remote: Remote) -> None:
    lines = [ln for ln in (host.read(known_hosts(host)) or "").splitlines()
             if ln.split()[:1] != [remote.known_as]]
    host.write(known_hosts(host), "".join(f"{ln}\n" for ln in lines), 0o600)


def run(host: Host, remote: Remote, command: list[str], timeout: float = 300,
        input: str | None = None) -> Result:
    """Run a command on remote (read-only for this host: a query); Unreachable
    when SSH itself fails (255) or the host does not answer in time."""
    res = host.query(ssh_argv(host, remote, command), input=input, ok=range(256),
                     timeout=timeout)
    if res.code == 124 and "timed out" in res.err:
        raise Unreachable(f"host {remote.name} ({remote.url}): no answer within {timeout:g} s")
    if res.code == 255:
        raise Unreachable(describe_failure(host, remote, res.err))
    return res


# What ssh itself says when it cannot reach or log in to a host (LogLevel=ERROR).
SSH_OWN = ("ssh:", "Connection refused", "Connection timed out", "Connection closed",
           "Connection reset", "No route to host", "Network is unreachable", "Permission denied",
           "kex_exchange_identification", "banner exchange", "Could not resolve", "not responding",
           "Broken pipe", "client_loop")


def describe_failure(host: Host, remote: Remote, stderr: str) -> str:
    text = clean(stderr)
    if "IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        now = scan(host, remote)
        seen = key_fingerprint(now[0]) if now else "unknown"
        return (f"host {remote.name} ({remote.url}) answered with another host key: "
                f"{seen}, pinned {remote.fingerprint}; refused. If the host was reinstalled, "
                f"check the new key on it, then `hosts remove {remote.name}` and add it again")
    last = [line for line in text.splitlines() if line.strip()][-1:]
    if not any(marker in text for marker in SSH_OWN):
        # ssh exits 255 too when the remote command dies by a signal (no
        # exit status comes back), saying nothing of its own.
        return (f"host {remote.name} ({remote.url}) answered, but the command there ended "
                "without an exit status (killed by a signal, or its connection dropped)"
                + (f": {last[0]}" if last else ""))
    return f"host {remote.name} ({remote.url}) is unreachable: {last[0]}"


def siteops(host: Host, remote: Remote, command: str, *args: str, timeout: float = 300,
            input: str | None = None) -> Result:
    """Run one of siteops's commands on remote (from its installed suite)."""
    return run(host, remote, [f"{host.paths.install_dir}/bin/{command}", *args],
               timeout=timeout, input=input)


def check_version(host: Host, remote: Remote) -> None:
    """The remote runs this very suite, else UsageError with the fix."""
    res = siteops(host, remote, "hosts", "version", timeout=60)
    theirs = res.out.strip()
    ours = version()
    if res.code != 0 or theirs != ours:
        what = ("has no siteops" if res.code == 127 or "No such file" in res.err
                else f"runs siteops {theirs or '(unknown)'}, this host {ours}")
        raise UsageError(
            f"host {remote.name} {what}. Install this one there (then bootstrap it): "
            f"tar -C {host.paths.install_dir} -c bin lib templates | ssh -p {remote.port} "
            f"{remote.user}@{remote.address.strip('[]')} 'mkdir -p /tmp/siteops && tar -C "
            f"/tmp/siteops -x && /tmp/siteops/bin/bootstrap'")


# -- fleet views ----------------------------------------------------------------

def each(host: Host, remotes: list[Remote], task: Callable[[Remote], dict],
         timeout: float) -> dict[str, dict]:
    """task on every remote at once, each bounded by timeout: {name: result, or
    {"error": why}} (an unreachable host never stops the others)."""
    def guarded(remote: Remote) -> dict:
        started = time.monotonic()
        try:
            return task(remote)
        except (SiteopsError, json.JSONDecodeError, OSError) as exc:
            return {"error": str(exc) if not isinstance(exc, json.JSONDecodeError)
                    else f"host {remote.name}: not JSON ({exc})",
                    "seconds": round(time.monotonic() - started, 1)}
    if not remotes:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(remotes))) as pool:
        return dict(zip((r.name for r in remotes), pool.map(guarded, remotes)))


def remote_json(host: Host, remote: Remote, command: str, *args: str,
                timeout: float) -> dict | list:
    """A remote siteops command's --json output (its exit code may be non-zero,
    as audit's is)."""
    res = siteops(host, remote, command, *args, "--json", timeout=timeout)
    if not res.out.strip():
        raise SiteopsError(f"host {remote.name}: {command} printed nothing "
                           f"(exit {res.code}): {clean(res.err).strip()[:300]}")
    return json.loads(res.out)


def gather(host: Host, here: dict | list, command: list[str],
           timeout: float) -> tuple[dict[str, dict | list], dict[str, str]]:
    """A --json view of this host (here) and of every inventory host at once
    (command run there with --json): ({host: document}, {host: error})."""
    remotes = list(load(host).values())
    results = each(host, remotes, lambda r: {"doc": remote_json(
        host, r, command[0], *command[1:], timeout=timeout)}, timeout)
    docs: dict[str, dict | list] = {LOCAL: here}
    errors = {}
    for name, result in results.items():
        if "error" in result:
            errors[name] = result["error"]
        else:
            docs[name] = result["doc"]
    return docs, errors


LOCAL = "local"


def add_arguments(p, what: str, timeout: int) -> None:
    """--all-hosts and --host-timeout, for a command with a fleet view."""
    p.add_argument("--all-hosts", action="store_true",
                   help=f"also {what} every host of the inventory (hosts list), asked at once")
    p.add_argument("--host-timeout", type=validate.number("--host-timeout", 5, 3600),
                   default=timeout, metavar="S",
                   help=f"with --all-hosts: seconds each host has to answer (default {timeout})")
