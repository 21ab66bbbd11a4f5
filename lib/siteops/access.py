"""Tenant keys: SSH keys that act on their own site's siteops commands only.

A tenant logs in as the deploy user. sshd reads ~deploy/.ssh/authorized_keys
(the operator's keys, full access) and then this module's file,
/etc/ssh/siteops-keys/deploy (root-owned, rendered from the registry, never
edited in place). Each of its lines is `restrict` (no pty, no port, agent or
X11 forwarding, no ~/.ssh/rc) with a forced command: sudo runs `tenant
FINGERPRINT` as root, which runs what the tenant asked (SSH_ORIGINAL_COMMAND)
only if the registry gives that key that site and a role allowing it. The
registry is the one authority: a line left in the file by mistake grants
nothing its key no longer holds.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .host import Host
from .model import Key, Site

# Key types sshd accepts by default on Debian 12 and 13 (no DSA).
TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
         "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
         "sk-ecdsa-sha2-nistp256@openssh.com")
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@+:-]{0,63}")
MIN_RSA_BITS = 2048
UNUSED_DAYS = 90
SUDO = "/usr/bin/sudo"
HEADER = ("# Managed by siteops (access add/remove): tenant keys of the deploy user, each\n"
          "# limited to the tenant command. Edits here are undone and reported by audit.\n")


@dataclass(frozen=True)
class PublicKey:
    type: str
    blob: str       # base64, as in authorized_keys
    comment: str

    @property
    def text(self) -> str:
        return f"{self.type} {self.blob}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: str) -> str:
    """OpenSSH's SHA256 fingerprint of a base64 key blob."""
    digest = hashlib.sha256(base64.b64decode(blob)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _blob_type(raw: bytes) -> str | None:
    """The key type a blob names in its first field (None if it cannot be read)."""
    if len(raw) < 4:
        return None
    (n,) = struct.unpack(">I", raw[:4])
    return raw[4:4 + n].decode("ascii", "replace") if 0 < n <= 64 and len(raw) >= 4 + n else None


def key_lines(text: str) -> list[PublicKey]:
    """The public keys of an authorized_keys or .pub text (options before the
    type are dropped: siteops writes its own)."""
    keys = []
    for line in text.splitlines():
        words = line.strip().split()
        at = next((i for i, w in enumerate(words) if w in TYPES), None)
        if at is None or at + 1 >= len(words) or line.lstrip().startswith("#"):
            continue
        try:
            raw = base64.b64decode(words[at + 1], validate=True)
        except binascii.Error:
            continue
        if _blob_type(raw) == words[at]:
            keys.append(PublicKey(words[at], words[at + 1], " ".join(words[at + 2:])))
    return keys


def parse(text: str, source: str) -> PublicKey:
    """The one public key of text (a .pub file): UsageError otherwise."""
    if "PRIVATE KEY" in text:
        raise UsageError(f"{source} is a private key: give the public one (.pub); "
                         "nothing was changed")
    keys = key_lines(text)
    if len(keys) != 1:
        raise UsageError(f"{source}: expected one SSH public key ({', '.join(TYPES[:3])}, ...), "
                         f"found {len(keys)}; nothing was changed")
    return keys[0]


def check_strength(host: Host, key: PublicKey) -> None:
    """ssh-keygen must read the key as sshd will; RSA needs 2048 bits."""
    res = host.query(["ssh-keygen", "-l", "-f", "/dev/stdin"], input=key.text + "\n",
                     ok=range(256))
    words = res.out.split()
    if res.code != 0 or len(words) < 2 or words[1] != key.fingerprint:
        raise UsageError(f"ssh-keygen cannot read the key ({res.err.strip() or res.out.strip()});"
                         " nothing was changed")
    if key.type == "ssh-rsa" and int(words[0]) < MIN_RSA_BITS:
        raise UsageError(f"an RSA key of {words[0]} bits is too weak: use ed25519 or RSA of "
                         f"{MIN_RSA_BITS} bits or more; nothing was changed")


def label(value: str) -> str:
    """A key's label: letters, digits, space and ._@+:- (64 at most)."""
    value = value.strip()
    if not LABEL.fullmatch(value):
        raise UsageError(f"invalid label {value!r}: 1-64 of letters, digits, space and ._@+:- "
                         "starting with a letter or digit")
    return value


def tenant_program(host: Host) -> Path:
    return host.paths.install_dir / "bin" / "tenant"


def line(host: Host, key: Key) -> str:
    """The authorized_keys line of a tenant key: every restriction, the forced command."""
    assert FINGERPRINT.fullmatch(key.fingerprint) and all(
        c.isalnum() or c in "+/=@.- " for c in key.key)
    return (f'restrict,command="{SUDO} -n {tenant_program(host)} {key.fingerprint}" '
            f"{key.key} siteops-tenant\n")


def render(host: Host, sites: list[Site]) -> str:
    """The tenant keys file for these sites: each key once (a key on several
    sites has one line; the registry says which sites it acts on)."""
    seen: dict[str, str] = {}
    for site in sorted(sites, key=lambda s: s.name):
        for key in site.keys:
            seen.setdefault(key.fingerprint, line(host, key))
    return HEADER + "".join(seen.values())


def write(host: Host, sites: list[Site], create: bool = False) -> bool:
    """Write the tenant keys file (0640 root:deploy: sshd reads it as deploy);
    True if it changed. Takes effect for the next login, no reload. Without
    create (bootstrap's), a host that has no such file and no key is left alone."""
    path = host.paths.tenant_keys
    if not create and not any(s.keys for s in sites) and not path.parent.is_dir():
        return False
    host.ensure_dir(path.parent, 0o755)
    return host.write(path, render(host, sites), 0o640, "root", "deploy")


def sites_of(sites: list[Site], fingerprint_: str) -> dict[str, Key]:
    """The sites a key acts on, with its entry on each."""
    return {s.name: k for s in sites for k in s.keys if k.fingerprint == fingerprint_}


def operator_keys(host: Host, deploy_home: str) -> list[PublicKey]:
    """The keys of deploy's own authorized_keys files (full access)."""
    ssh = host.paths.p(deploy_home) / ".ssh"
    return [k for f in ("authorized_keys", "authorized_keys2")
            for k in key_lines(host.read(ssh / f) or "")]


def record_operator_keys(host: Host, deploy_home: str) -> None:
    """Remember the keys now in deploy's authorized_keys as the operator's
    (bootstrap: the operator's word); audit reports any other."""
    prints = sorted({k.fingerprint for k in operator_keys(host, deploy_home)})
    host.write(host.paths.operator_keys, "".join(f"{p}\n" for p in prints), 0o600)


def known_operator_keys(host: Host) -> set[str]:
    return set((host.read(host.paths.operator_keys) or "").split())


def mark_used(host: Host, fingerprint_: str) -> None:
    """Note that a key was used now (the mark file's mtime)."""
    path = host.paths.key_used(fingerprint_)
    host.ensure_dir(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.utime(fd)
    finally:
        os.close(fd)


def last_used(host: Host, fingerprint_: str) -> str | None:
    """When the key was last used (UTC, 2026-11-30T12:00:00Z), or None."""
    try:
        mtime = os.stat(host.paths.key_used(fingerprint_), follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def facts(host: Host, sites: list[Site], deploy_home: str | None) -> dict:
    """What audit checks of SSH access: the tenant keys file against the
    registry (all sites), and deploy's own keys against those bootstrap recorded."""
    tenants = {k.fingerprint for s in sites for k in s.keys}
    own = operator_keys(host, deploy_home) if deploy_home else []
    known = known_operator_keys(host)
    return {
        "file": host.read(host.paths.tenant_keys),
        "expected": render(host, sites),
        "tenant_in_operator": sorted({k.fingerprint for k in own} & tenants),
        "unknown_operator": sorted({f"{k.fingerprint} {k.comment}".strip() for k in own
                                    if k.fingerprint not in known | tenants}),
        "last_used": {f: last_used(host, f) for f in sorted(tenants)},
    }
