"""Kernel-enforced port ownership on loopback: one nftables table, inet
siteops, rendered from the registry (see templates/nftables/siteops.nft).

Debian 12's systemd ignores SocketBindAllow=/SocketBindDeny= (no BPF), so
these owner-matched rules are what stops one site's process from answering on
another site's port, on every distribution; where systemd has BPF the units'
SocketBind rules also refuse the bind() itself. The file is checked with
`nft -c -f` before `nft -f` loads it in one transaction; siteops-nftables.service
loads it at boot before the network and the sites start."""

from __future__ import annotations

from . import systemd, units, users
from .model import Site
from .host import CANDIDATE, Host
from .templates import render

UNIT = "siteops-nftables.service"
TABLE = ("inet", "siteops")


def conf(host: Host):
    return host.paths.etc / "nftables.conf"


def port_sets(slot: int) -> str:
    """The nft set of a slot's three blocks: { 3100-3109, 4000-4009, 5000-5009 }."""
    return "{ " + ", ".join(f"{first}-{last}" for first, last in units.block_ranges(slot)) + " }"


def site_rules(name: str, slot: int, uid: int, nginx_uid: int) -> str:
    ports = port_sets(slot)
    # Root too: systemd (PID 1) holds a sleeping site's doors, and the kernel
    # answers a connection to a listening socket as the socket's owner.
    return (f"\t\ttcp sport {ports} meta skuid != {{ 0, {uid} }} drop "
            f"comment \"siteops site {name}: only {name} (or root) answers from its ports\"\n"
            f"\t\ttcp dport {ports} meta skuid != {{ 0, {nginx_uid}, {uid} }} "
            f"reject with tcp reset comment \"siteops site {name}: only {name}, nginx and "
            f"root connect to its ports\"\n")


def render_conf(sites: list[Site], nginx_uid: int) -> str:
    """The ruleset for every site whose user exists (its uid is recorded)."""
    rules = "".join(site_rules(s.name, s.slot, s.uid, nginx_uid)
                    for s in sorted(sites, key=lambda s: s.slot) if s.uid is not None)
    return render("nftables/siteops.nft", rules=rules, nginx_uid=nginx_uid)


def nginx_uid(host: Host) -> int:
    """The uid nginx's workers run as (www-data on Debian and Ubuntu)."""
    account = users.lookup(host, "www-data")
    return account.uid if account else 33


def ensure(host: Host, sites: list[Site]) -> None:
    """Write the ruleset for sites (checked with `nft -c`) and load it if it
    changed or is not loaded."""
    path = conf(host)
    changed = host.write_checked(path, render_conf(sites, nginx_uid(host)),
                                 ["nft", "-c", "-f", CANDIDATE], "nftables rules", 0o600)
    if changed or not loaded(host):
        host.run(["nft", "-f", path])


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
