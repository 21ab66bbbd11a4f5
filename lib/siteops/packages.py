"""Distribution packages and runtimes the shared stack needs."""

from __future__ import annotations

from .host import Host

# The same names on Ubuntu 24.04 and Debian 12/13.
PACKAGES = (
    "nginx", "postgresql", "redis-server", "ufw", "fail2ban", "python3-systemd",
    "certbot", "logrotate", "unattended-upgrades", "nodejs", "npm", "python3",
    "python3-venv", "git", "openssh-server", "sudo", "curl", "acl", "nftables", "auditd",
    "sysstat", "restic",
)
PNPM = "pnpm@9"


def missing(host: Host, names: tuple[str, ...] = PACKAGES) -> list[str]:
    """The packages among names that dpkg does not have installed."""
    res = host.query(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\\n", *names],
                     ok=(0, 1))
    installed = {line.split()[0] for line in res.out.splitlines()
                 if line.endswith(" installed")}
    return [name for name in names if name not in installed]


def install(host: Host, names: list[str]) -> None:
    """apt-get install names (none: no apt call at all)."""
    if names:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        host.run(["apt-get", "update", "-q"], env=env)
        host.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *names],
                 env=env, timeout=1800)


def ensure_installed(host: Host) -> None:
    """apt-get install whatever is missing; no apt call at all when nothing is."""
    with host.step("packages"):
        install(host, missing(host))
    with host.step("pnpm"):
        if host.query(["sh", "-c", "command -v pnpm"], ok=(0, 1, 127)).code != 0:
            host.run(["npm", "install", "--global", PNPM])
