"""Kernel-enforced port ownership on loopback: one nftables table, inet
siteops, rendered from the registry (see templates/nftables/siteops.nft).

Debian 12's systemd ignores SocketBindAllow=/SocketBindDeny= (no BPF), so
these owner-matched rules are what stops one site's process from answering on
another site's port, on every distribution; where systemd has BPF the units'
SocketBind rules also refuse the bind() itself. The ruleset is
loaded by `nft -f` in one transaction, then written; siteops-nftables.service
loads it at boot before the network and the sites start."""

from __future__ import annotations

import re

from . import systemd, units, users
from .model import Site
from .host import Host
from .templates import render

UNIT = "siteops-nftables.service"
TABLE = ("inet", "siteops")


def conf(host: Host):
    return host.paths.etc / "nftables.conf"


CHUNK = 100  # elements per `add element` (see the template)


def add_elements(set_name: str, items: list[str]) -> str:
    """`add element` commands for a set, CHUNK elements each."""
    return "".join(f"add element {' '.join(TABLE)} {set_name} {{\n\t"
                   + ",\n\t".join(items[i:i + CHUNK]) + "\n}\n"
                   for i in range(0, len(items), CHUNK))


def render_conf(sites: list[Site], nginx_uid: int) -> str:
    """The ruleset for every site whose user exists (its uid is recorded):
    each of its blocks in the ports set, and as owned by its uid."""
    ports, owners = [], []
    for s in sorted(sites, key=lambda s: s.slot):
        if s.uid is None:
            continue
        for first, last in units.block_ranges(s.slot):
            label = f'comment "siteops site {s.name}"'
            ports.append(f"{first}-{last} {label}")
            owners.append(f"{s.uid} . {first}-{last} {label}")
    return render("nftables/siteops.nft", nginx_uid=nginx_uid,
                  elements=add_elements("ports", ports) + add_elements("owners", owners))


def owned(loaded: str) -> set[tuple[str, int, int, int]]:
    """(site, uid, first, last) of each block in the loaded owners set."""
    return {(name, int(uid), int(first), int(last)) for uid, first, last, name in re.findall(
        r'(\d+) \. (\d+)-(\d+) comment "siteops site ([^"]+)"', loaded)}


def nginx_uid(host: Host) -> int:
    """The uid nginx's workers run as (www-data on Debian and Ubuntu)."""
    account = users.lookup(host, "www-data")
    return account.uid if account else 33


def ensure(host: Host, sites: list[Site]) -> None:
    """Load the ruleset for sites if it changed or is not loaded, and write it.
    A changed ruleset is loaded before it is written: `nft -f` is one
    transaction, so a ruleset nft refuses loads nothing and is not written
    (checking it first with `nft -c` would parse it twice). Killed between
    the two, the old file stays and is rendered again on the next run."""
    path, text = conf(host), render_conf(sites, nginx_uid(host))
    if host.read(path) != text or not loaded(host):
        host.run(["nft", "-f", "/dev/stdin"], input=text, note="the rendered ruleset")
    host.write(path, text, 0o600)


def loaded(host: Host) -> str | None:
    """The loaded table as `nft list` prints it, or None if it is not loaded."""
    res = host.query(["nft", "list", "table", *TABLE], ok=range(256))
    return res.out if res.code == 0 else None


def ensure_boot_unit(host: Host) -> None:
    """siteops-nftables.service: verified, enabled, so the rules load at boot."""
    systemd.write_units(host, {host.paths.unit(UNIT): render(f"systemd/{UNIT}", conf=conf(host))},
                        [UNIT], "nftables unit")
    if not systemd.is_enabled(host, UNIT):
        host.run(["systemctl", "enable", "--quiet", UNIT])
