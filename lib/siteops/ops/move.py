"""Moving a site to another host of the inventory, in resumable stages
(move-site's DESCRIPTION says which): the source's side (start, finish,
abort) and the target's (receive, run by the source over SSH)."""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from pathlib import Path

from .. import backup, envfile, fleet, instances, model, network, nginx, registry
from ..errors import SiteopsError, UsageError
from ..host import Host, clean
from ..journal import now, who
from ..model import Maintenance, Move, Site
from . import restore as restore_op
from . import sites as sites_op

COPYING, COPIED, FROZEN, FORWARDING = "copying", "copied", "frozen", nginx.FORWARDING
ABORTING = "aborting"
RECEIVE_STEPS = ("check", "password", "restore", "serve", "clean")
MOVE_TAG = "move"
CLOUD_CREDENTIALS = ("AWS_", "B2_", "AZURE_", "GOOGLE_", "OS_")

# -- on the target ---------------------------------------------------------------

def transfer_dir(host: Host, name: str) -> Path:
    return host.paths.state / "move" / name


def receive(host: Host, name: str, step: str, *, size: int = 0,
            trust: str | None = None) -> None:
    """One step of receiving a site (RECEIVE_STEPS), run by the source's
    move-site over SSH, under the move's own lock here: a source run again
    after it was stopped during a step meets the step still running here, not
    a second copy of it. size: the room the site needs (check); trust: the
    sending host's address (serve)."""
    host.ensure_dir(transfer_dir(host, name).parent, 0o700)
    with registry.flock(transfer_dir(host, name).parent / f"{name}.lock",
                        f"move-site {name} --receive {step}", 0, f"receiving site {name}"):
        receive_step(host, name, step, size, trust)


def receive_step(host: Host, name: str, step: str, size: int, trust: str | None) -> None:
    here = registry.load(host).sites.get(name)
    moving = transfer_dir(host, name).is_dir()
    if step == "check":
        if here is not None and not (moving and here.held):
            raise UsageError(f"site {name} already exists on this host (not a move in progress)")
        if here is None:
            registry.allocate_slot(registry.load(host), network.unavailable_ports(host))
        st = os.statvfs(host.paths.sites)
        if st.f_bavail * st.f_frsize < 2 * size + 500 * 2**20:
            raise SiteopsError(f"not enough disk for {name}: it needs about "
                               f"{(2 * size) // 2**20 + 500} MB here, "
                               f"{st.f_bavail * st.f_frsize // 2**20} MB are free")
        host.say("resume" if here is not None else "ok")
    elif step == "password":
        data = sys.stdin.read(4096).strip()
        if len(data) < 32:
            raise UsageError("no transfer password on standard input")
        with host.step(f"transfer repository of {name}"):
            host.ensure_dir(transfer_dir(host, name).parent, 0o700)
            host.ensure_dir(transfer_dir(host, name), 0o700)
            host.write(transfer_dir(host, name) / "password", data + "\n", 0o600)
    elif step == "restore":
        if here is not None and not here.held:
            raise UsageError(f"site {name} here is not a move's copy: not replacing its data")
        if here is not None and here.live is None:  # a first restore stopped before its deploy
            sites_op.remove_site(host, name, final_backup=False)
        source = (f"{transfer_dir(host, name)}/repo", transfer_dir(host, name) / "password")
        with backup.reading(*source):
            snapshot = backup.find_snapshot(host, name, None)
        host.say(f"restore {name} from snapshot {snapshot['short_id']} of "
                 f"{snapshot['time'][:19].replace('T', ' ')} (workers and timers held)")
        restore_op.restore_one(host, name, snapshot, source, held=True)
    elif step == "serve":
        if here is None:
            raise UsageError(f"site {name} is not on this host")
        secret, maintenance = read_serve_input()
        if trust:
            sources = sorted({*here.forwarded_by, trust})
            write_move_secret(host, name, nginx.forward_check(secret, sources))

        def serve(entry: Site) -> None:
            if trust and trust not in entry.forwarded_by:
                entry.forwarded_by.append(trust)
            if maintenance and not entry.maintenance:  # the operator's, kept through the move
                entry.maintenance = maintenance
        here = registry.update_site(host, name, f"move-site {name}", serve)
        nginx.ensure_site(host, here)
        instances.hold(host, name, False, f"move-site {name}")
    else:  # clean
        with host.step(f"transfer repository of {name} removed"):
            host.remove_tree(transfer_dir(host, name))
        if here is not None and here.forwarded_by:
            here = registry.update_site(host, name, f"move-site {name}",
                                        lambda e: e.forwarded_by.clear())
            nginx.ensure_site(host, here)
        remove_move_secret(host, name)


def read_serve_input() -> tuple[str, Maintenance | None]:
    """What `--receive serve` reads on standard input (never argv): the move's
    forward secret and the operator's maintenance, if one was set before it."""
    try:
        doc = json.loads(sys.stdin.read(65536))
        secret = doc["secret"]
        maintenance = doc.get("maintenance")
        m = model.from_json(Maintenance, maintenance, "maintenance") if maintenance else None
    except (ValueError, KeyError, TypeError):  # RegistryTypeError is a ValueError
        raise UsageError("--receive serve reads {\"secret\": ..., \"maintenance\": ...} on "
                         "standard input") from None
    if not isinstance(secret, str) or len(secret) < 32 \
            or not secret.replace("-", "").replace("_", "").isalnum():
        raise UsageError("no forward secret on standard input")
    return secret, m


def write_move_secret(host: Host, name: str, text: str) -> None:
    """The site's root-only nginx include of the move; a change is reloaded
    by the next nginx.ensure_site even when the site's own file is unchanged."""
    path = host.paths.nginx_move_secret(name)
    with host.step(f"nginx include of the move of {name} (root-only)"):
        host.ensure_dir(path.parent, 0o700)
        if host.write(path, text, 0o600) and not host.dry_run:
            nginx.mark_reload_pending(host)


def remove_move_secret(host: Host, name: str) -> None:
    """The include goes once the site's file no longer names it."""
    with host.step(f"nginx include of the move of {name} removed"):
        host.remove(host.paths.nginx_move_secret(name))


# -- on the source ----------------------------------------------------------------

def password_file(host: Host, name: str) -> Path:
    return host.paths.state / "move" / f"{name}.password"


def secret_file(host: Host, name: str) -> Path:
    """The move's forward secret: the source's nginx sends it, the target
    believes forwarded visitor addresses only with it."""
    return host.paths.state / "move" / f"{name}.forward"


def kept_secret(host: Host, path: Path) -> str:
    """The secret in path (root-only), made the first time."""
    if host.read(path) is None:
        host.ensure_dir(path.parent, 0o700)
        host.write(path, envfile.secret() + "\n", 0o600)
    return (host.read(path) or "").strip()


def there(host: Host, remote: fleet.Remote, *args: str, timeout: float = 300,
          input: str | None = None) -> str:
    """Run a siteops command on remote; its output, or SiteopsError with its error."""
    res = fleet.siteops(host, remote, *args, timeout=timeout, input=input)
    if res.code != 0:
        why = clean(res.err or res.out).strip().splitlines()[-3:]
        raise SiteopsError(f"on {remote.name}: {args[0]} {args[1]}: " + " / ".join(why))
    return res.out


def transfer_repository(host: Host, remote: fleet.Remote, name: str) -> tuple[str, list[str]]:
    """The transfer repository on the target as restic names it from here
    (sftp over siteops's pinned SSH), and the options that say how."""
    ssh = fleet.ssh_argv(host, remote, ["-s", "sftp"])
    ssh.remove("--")
    return (f"sftp:{remote.user}@{remote.address}:{transfer_dir(host, name)}/repo",
            ["-o", f"sftp.command={' '.join(ssh)}"])


def copy_snapshot(host: Host, remote: fleet.Remote, site: Site) -> None:
    """A backup of the site here, copied into the transfer repository on the
    target (only the blobs it lacks), then restored there with its workers
    and timers held."""
    name = site.name
    pw = password_file(host, name)
    there(host, remote, "move-site", name, "--receive", "password",
          input=kept_secret(host, pw) + "\n")
    repo, options = transfer_repository(host, remote, name)
    dest = {"RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(pw),
            "RESTIC_CACHE_DIR": str(host.paths.restic_cache)}
    with host.step(f"transfer repository on {remote.name}"):
        if host.query(["restic", *options, "cat", "config"], env=dest, ok=range(256)).code:
            host.run(["restic", "--quiet", *options, "init"], env=dest)
    sid = backup.backup_site(host, site, tags=(MOVE_TAG,))
    src = backup.restic_env(host)
    credentials = {k: v for k, v in src.items() if k.startswith(CLOUD_CREDENTIALS)}
    with host.step(f"snapshot {sid[:8]} copied to {remote.name}"):
        host.run(["restic", "--quiet", *options, "copy", "--from-repo", src["RESTIC_REPOSITORY"],
                  "--from-password-file", src["RESTIC_PASSWORD_FILE"], sid],
                 env={**credentials, **dest}, timeout=6 * 3600)
    with host.step(f"restored on {remote.name}"):
        there(host, remote, "move-site", name, "--receive", "restore", timeout=6 * 3600)


def healthy_there(site: Site, remote: fleet.Remote) -> None:
    """The target's nginx answers the site's first domain with 2xx or 3xx."""
    conn = http.client.HTTPConnection(remote.address.strip("[]"), 80, timeout=15)
    try:
        conn.request("GET", "/", headers={"Host": site.domains[0]})
        status = conn.getresponse().status
    except OSError as exc:
        raise SiteopsError(f"{site.name} on {remote.name} does not answer: {exc}") from None
    finally:
        conn.close()
    if not 200 <= status < 400:
        raise SiteopsError(f"{site.name} on {remote.name} answers {status}; not moving on")


def same_host(host: Host, remote: fleet.Remote, name: str) -> bool:
    """True if remote is this very host: it reads a token just written here
    (machine IDs and host keys repeat on machines made from one image)."""
    probe = host.paths.state / "move" / f"{name}.probe"
    token = envfile.secret()
    host.ensure_dir(probe.parent, 0o700)
    host.write(probe, token + "\n", 0o600)
    try:
        return fleet.run(host, remote, ["cat", str(probe)]).out.strip() == token
    finally:
        host.remove(probe)


def set_move(host: Host, name: str, move: Move | None, maintenance: Maintenance | None) -> Site:
    def change(entry: Site) -> None:
        entry.move, entry.maintenance = move, maintenance
    site = registry.update_site(host, name, f"move-site {name}", change)
    nginx.ensure_site(host, site)
    return site


def start(host: Host, name: str, to: str) -> None:
    """Move the site to host `to`, from the stage it has reached to the
    forward stage (each stage resumable)."""
    site = registry.get_site(registry.load(host), name)
    remote = fleet.get(host, to)
    if site.move and site.move.stage == ABORTING:
        raise UsageError(f"an abort of {name}'s move is under way: run move-site {name} --abort "
                         "again to finish it")
    if site.move and site.move.to != to:
        raise UsageError(f"{name} is being moved to {site.move.to}: finish or abort that first")
    if site.held and not site.move:
        raise UsageError(f"{name} here is a move's copy (its workers are held): run move-site "
                         "on the host it comes from")
    if site.move is None:
        if same_host(host, remote, name):
            raise UsageError(f"host {remote.name} is this host: nothing to move")
        fleet.check_version(host, remote)
        need = sum(f.stat().st_size for f in host.paths.site(name).rglob("*")
                   if f.is_file() and not f.is_symlink())
        there(host, remote, "move-site", name, "--receive", "check", "--bytes", str(need))
        site = set_move(host, name, Move(to, remote.address, COPYING, started=now(),
                                         maintenance=site.maintenance), site.maintenance)
    move = site.move
    assert move is not None
    if move.stage == COPYING:
        copy_snapshot(host, remote, site)
        healthy_there(site, remote)
        move.stage = COPIED
        site = set_move(host, name, move, site.maintenance)
    if move.stage == COPIED:
        frozen = Maintenance("This site is moving to a new server; back in a moment.", 30,
                             now(), who())
        site = set_move(host, name, move, frozen)
        site = instances.hold(host, name, True, f"move-site {name}")
        copy_snapshot(host, remote, site)
        healthy_there(site, remote)
        move.stage = FROZEN
        site = set_move(host, name, move, frozen)
    secret = kept_secret(host, secret_file(host, name))
    if move.stage == FROZEN:
        address = fleet.run(host, remote, ["printenv", "SSH_CONNECTION"]).out.split()[:1]
        there(host, remote, "move-site", name, "--receive", "serve",
              *(["--trust", address[0]] if address else []),
              input=json.dumps({"secret": secret, "maintenance": model.to_json(move.maintenance)}))
        write_move_secret(host, name, nginx.forward_secret(secret))
        move.stage = FORWARDING
        site = set_move(host, name, move, None)
    else:  # run again: the forwarding as the registry has it (a stop may have come between)
        write_move_secret(host, name, nginx.forward_secret(secret))
        nginx.ensure_site(host, site)
    host.say(f"{name} is served by {remote.name} ({remote.address}); this host forwards its "
             f"visitors there. Point DNS for {', '.join(site.domains)} at {remote.address}, "
             f"then run: move-site {name} --finish")


def finish(host: Host, name: str, *, confirmed: bool = False) -> None:
    """Remove the forwarding site here once DNS has moved; confirmed: even
    though visitors still arrived here in the last hour."""
    site = registry.get_site(registry.load(host), name)
    if not site.move or site.move.stage != FORWARDING:
        raise UsageError(f"{name} is not forwarding to another host (move-site {name} --to HOST "
                         "first); nothing was changed")
    remote = fleet.get(host, site.move.to)
    arrived = recent_requests(host.paths.of(name).nginx_access_log, time.time())
    if arrived and not confirmed:
        raise UsageError(f"{arrived} request(s) for {name} came to this host in the last hour "
                         f"and were forwarded to {remote.name}: DNS may not have moved for "
                         "every visitor yet; pass --yes to remove the site here anyway; "
                         "nothing was changed")
    sites_op.remove_site(host, name)
    there(host, remote, "move-site", name, "--receive", "clean")
    for path in (password_file(host, name), secret_file(host, name)):
        host.remove(path)
    remove_move_secret(host, name)
    host.say(f"{name} now lives on {remote.name} only")


def recent_requests(log: Path, now_s: float, seconds: float = 3600,
                    tail: int = 8 * 2**20) -> int:
    """Requests in the site's nginx access log (its last 8 MB) within the last
    seconds: the siteops log format ends each line with t=<epoch>.<ms>."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    count = 0
    for line in lines:
        _, sep, stamp = line.rpartition(" t=")
        try:
            if sep and float(stamp) >= now_s - seconds:
                count += 1
        except ValueError:
            continue
    return count


def abort(host: Host, name: str, *, confirmed: bool = False) -> None:
    """The site served here again as before the move, the target's copy
    removed; confirmed: even after the forward stage."""
    site = registry.get_site(registry.load(host), name)
    if not site.move:
        raise UsageError(f"{name} is not being moved; nothing was changed")
    move = site.move
    if move.stage == FORWARDING and not confirmed:
        raise UsageError(f"{name} is served by {site.move.to} since the forward stage: what "
                         "visitors wrote there since is lost by an abort; pass --yes if you "
                         "mean it; nothing was changed")
    remote = fleet.get(host, move.to)
    move.stage = ABORTING
    set_move(host, name, move, move.maintenance)  # served here again first, as before the move
    instances.hold(host, name, False, f"move-site {name} --abort")
    if fleet.siteops(host, remote, "sites", "show", name, "--json").code == 0:
        there(host, remote, "remove-site", name, "--yes", "--no-backup", timeout=1800)
    there(host, remote, "move-site", name, "--receive", "clean")
    for path in (password_file(host, name), secret_file(host, name)):
        host.remove(path)
    set_move(host, name, None, move.maintenance)
    remove_move_secret(host, name)
    host.say(f"{name} is served here again, as before the move"
             + (" (in maintenance, as the operator had set it)" if move.maintenance else ""))
