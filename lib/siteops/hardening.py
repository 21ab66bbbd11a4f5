"""The host's hardening baseline beyond the kernel settings (sysctl.py), sshd
(ssh.py) and the firewall. bootstrap writes these files whole, each setting
explained in the file:

  /etc/modprobe.d/siteops.conf             network protocols, storage drivers and
                                           filesystems a VPS never uses
  /etc/security/limits.d/90-siteops.conf   no core dumps in login sessions
  /etc/audit/rules.d/siteops.rules         auditd: changes to accounts, sudo, sshd,
                                           keys, siteops, nginx, units, cron; module
                                           loads; commands run as root in a login
  /etc/systemd/system/auditd.service.d/siteops.conf   auditd not in a container
  /etc/issue, /etc/issue.net               a legal notice instead of the OS version

and sets single lines in files of the distribution (SETTINGS): login.defs'
UMASK, sysstat's collection switch, the sysctl file UFW applies at start. audit reports a file or line that
differs, and audit rules the kernel has not loaded.

Points deliberately not taken (README, "Hardening"): password aging and
quality (no login accepts a password), a boot loader password and separate
partitions (a VPS's console and disk are the provider's), AIDE, rkhunter,
process accounting, needrestart (which would restart site units outside the
health-gated switch)."""

from __future__ import annotations

import re

from . import sysctl, systemd, users
from .host import Host
from .templates import render

AUDIT_RULES = "/etc/audit/rules.d/siteops.rules"
AUDITD_DROPIN = "/etc/systemd/system/auditd.service.d/siteops.conf"
FILES = {
    "/etc/modprobe.d/siteops.conf": "hardening/modprobe.conf",
    "/etc/security/limits.d/90-siteops.conf": "hardening/limits.conf",
    AUDIT_RULES: "hardening/audit.rules",
    AUDITD_DROPIN: "hardening/auditd-container.conf",
    "/etc/issue": "hardening/issue",
    "/etc/issue.net": "hardening/issue",
}
# {file: {key: (explanation, line)}}: the line replaces the file's own setting
# of key (or is added), with the explanation as a comment above it.
SETTINGS = {
    "/etc/login.defs": {
        "UMASK": ("siteops: home directories useradd makes, and files of login sessions "
                  "that read UMASK, are not world-readable", "UMASK\t\t027"),
    },
    "/etc/default/sysstat": {
        "ENABLED": ("siteops: sysstat keeps 10-minute history of CPU, memory, disk and "
                    "network (`sar`): what happened at 3 am", 'ENABLED="true"'),
    },
    "/etc/default/ufw": {
        "IPT_SYSCTL": ("siteops: UFW applies the kernel baseline when it starts, not its "
                       "own file (which turns log_martians off again after every boot)",
                       f"IPT_SYSCTL={sysctl.CONF}"),
    },
}


def audit_rules(host: Host, text: str) -> str:
    """The rules text without watches (-w PATH) of paths this host lacks:
    auditctl stops at a rule it cannot add."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("-w ")
                   or host.paths.p(line.split()[1]).exists())


def files(host: Host) -> dict[str, str]:
    """{path: the text it should hold}."""
    deploy = users.lookup(host, users.DEPLOY_USER)
    home = deploy.home if deploy else f"/home/{users.DEPLOY_USER}"
    out = {path: render(template, deploy_home=home) for path, template in FILES.items()}
    out[AUDIT_RULES] = audit_rules(host, out[AUDIT_RULES])
    return out


def with_settings(text: str, settings: dict[str, tuple[str, str]]) -> str:
    """text with each key's uncommented setting replaced by its line (the
    explanation above it), or both added at the end."""
    lines = text.splitlines()
    for key, (why, line) in settings.items():
        comment = f"# {why}"
        at = next((i for i, l in enumerate(lines)
                   if re.match(rf"\s*{re.escape(key)}(\s|=|$)", l)), None)
        if at is None:
            lines += [comment, line]
            continue
        lines[at] = line
        if at == 0 or lines[at - 1] != comment:
            lines.insert(at, comment)
    return "\n".join(lines) + "\n"


def drift(host: Host, wanted: dict[str, str]) -> list[str]:
    """The managed paths whose content differs from the baseline (wanted: files())."""
    out = [path for path, text in wanted.items() if host.read(host.paths.p(path)) != text]
    for path, settings in SETTINGS.items():
        have = host.read(host.paths.p(path))
        if have is not None and with_settings(have, settings) != have:
            out.append(path)
    return out


def loaded_rules(host: Host) -> str | None:
    """`auditctl -l`, or None where auditd does not run (a container)."""
    if sysctl.in_container(host):
        return None
    return host.query(["auditctl", "-l"], ok=range(256)).out


def missing_rules(host: Host, wanted: dict[str, str]) -> list[str] | None:
    """Keys of siteops' audit rules (wanted: files()) the kernel has not loaded
    (None: not checked)."""
    loaded = loaded_rules(host)
    if loaded is None:
        return None
    keys = re.findall(r"-k (\S+)$", wanted[AUDIT_RULES], re.M)
    return sorted({k for k in keys if f"key={k}" not in loaded and f"-k {k}" not in loaded})


def facts(host: Host) -> dict:
    """{drift: [path], unloaded_rules: [key] | null} for audit."""
    wanted = files(host)
    return {"drift": drift(host, wanted), "unloaded_rules": missing_rules(host, wanted)}


def ensure(host: Host) -> None:
    """Write the baseline; load the audit rules and start sysstat where they changed."""
    with host.step("hardening baseline (modules, core dumps, auditd, banners, login.defs)"):
        wanted = files(host)
        changed = {path for path, text in wanted.items()
                   if host.write(host.paths.p(path), text)}
        for path, settings in SETTINGS.items():
            have = host.read(host.paths.p(path))
            if have is not None and host.write(host.paths.p(path), with_settings(have, settings)):
                changed.add(path)
        container = sysctl.in_container(host)
        if AUDITD_DROPIN in changed:
            host.run(["systemctl", "daemon-reload"])
            if container and host.query(["systemctl", "is-failed", "--quiet", "auditd.service"],
                                        ok=range(256)).code == 0:
                host.run(["systemctl", "reset-failed", "auditd.service"])  # failed at boot
        if not container:
            systemd.ensure_started(host, "auditd.service")
            if AUDIT_RULES in changed or missing_rules(host, wanted):
                host.run(["augenrules", "--load"])
        if "/etc/default/sysstat" in changed:
            host.run(["systemctl", "restart", "sysstat.service"])
