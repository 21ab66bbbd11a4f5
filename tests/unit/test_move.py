"""move-site: how the transfer repository is reached, what audit says of a
site being moved, and the refusals that change nothing (the box tier moves a
real site between two machines)."""

import pytest

from fakes import make_host
from siteops import fleet, nginx, site_checks
from siteops.commands import move_site
from siteops.ops import move
from siteops.errors import UsageError
from siteops.model import Move, Site
from siteops.paths import Paths


def test_the_transfer_repository_is_reached_through_the_pinned_ssh(root):
    host, _ = make_host(root)
    remote = fleet.Remote("big", "root", "192.0.2.2", 2222, "/root/.ssh/fleet")
    repo, options = move.transfer_repository(host, remote, "shop")
    assert repo == "sftp:root@192.0.2.2:" + str(root / "var/lib/siteops/move/shop/repo")
    assert options[0] == "-o" and options[1].startswith("sftp.command=ssh -F /dev/null ")
    command = options[1].split("=", 1)[1]
    assert "StrictHostKeyChecking=yes" in command and "-p 2222" in command
    assert command.endswith("192.0.2.2 -s sftp") and " -- " not in command


@pytest.mark.parametrize("move, held, severity, words", [
    (None, False, "ok", "not being moved"),
    (Move("big", "192.0.2.2", "copied"), False, "warning", "moving to big"),
    (Move("big", "192.0.2.2", "forwarding"), True, "warning", "forwards its visitors"),
    (None, True, "warning", "workers and timers held"),
])
def test_audit_names_a_move_in_progress_on_either_host(move, held, severity, words):
    f = site_checks.move_check(Site("shop", ["shop.test"], move=move, held=held))
    assert f.severity == severity and words in f.message and f.id == "site.shop.move"


def test_only_the_forward_stage_forwards():
    for stage in ("copying", "copied", "frozen", "aborting"):
        site = Site("shop", ["shop.test"], move=Move("big", "192.0.2.2", stage))
        assert "192.0.2.2" not in nginx.site_config(site, (1, 26, 3), None, Paths().of("shop"))


@pytest.mark.parametrize("argv, message", [
    (["shop"], "give one of --to HOST, --finish, --abort"),
    (["shop", "--to", "big", "--finish"], "give one of"),
    (["shop", "--finish", "--abort"], "give one of"),
])
def test_one_action_at_a_time(root, argv, message):
    host, _ = make_host(root)
    with pytest.raises(UsageError, match=message):
        move_site.run(host, move_site.build_parser().parse_args(argv))


def test_the_forward_carries_a_secret_and_the_target_refuses_its_source_without_it():
    secret = "s" * 43
    forward = nginx.forward_secret(secret)
    assert f'proxy_set_header X-Siteops-Forward "{secret}";' in forward
    check = nginx.forward_check(secret, ["192.0.2.1"])
    assert 'if ($realip_remote_addr = "192.0.2.1") { set $siteops_forward_refused 1; }' in check
    assert f'if ($http_x_siteops_forward = "{secret}") {{ set $siteops_forward_refused ""; }}' \
        in check
    assert check.endswith('if ($siteops_forward_refused) { set $siteops_forward_believed ""; '
                          'return 403; }\n')
    # The site's files name the root-only include, never the secret itself.
    target = Site("shop", ["shop.test"], forwarded_by=["192.0.2.1"])
    source = Site("shop", ["shop.test"], move=Move("big", "192.0.2.2", "forwarding"))
    for site in (target, source):
        text = nginx.site_config(site, (1, 26, 3), None, Paths().of("shop"))
        assert "include /etc/nginx/siteops-moves/shop.conf;" in text and secret not in text
    # On the target, refused requests are logged by the address that connected.
    text = nginx.site_config(target, (1, 26, 3), None, Paths().of("shop"))
    assert "access_log /srv/sites/shop/shared/logs/nginx-access.log siteops " \
           "if=$siteops_forward_believed;" in text
    assert "access_log /srv/sites/shop/shared/logs/nginx-access.log siteops_direct " \
           "if=$siteops_forward_refused;" in text


def test_requests_of_the_last_hour_are_counted_from_the_access_log(tmp_path):
    log = tmp_path / "nginx-access.log"
    now = 1_800_000_000.0
    log.write_text("".join(f'1.2.3.4 - - [x] "GET / HTTP/1.1" 200 5 "-" "ua" rt=0.001 '
                           f'urt="0.001" t={now - age:.3f}\n' for age in (7200, 3500, 10, 1))
                   + "garbage line\n")
    assert move.recent_requests(log, now) == 3
    assert move.recent_requests(tmp_path / "none.log", now) == 0


def test_finish_asks_for_yes_while_visitors_still_arrive(root, monkeypatch):
    from siteops import registry
    host, _ = make_host(root, dry_run=False)
    site = Site("shop", ["shop.test"], move=Move("big", "192.0.2.2", "forwarding"))
    monkeypatch.setattr(registry, "load", lambda h: type("R", (), {"sites": {"shop": site}})())
    monkeypatch.setattr(fleet, "get", lambda h, n: fleet.Remote("big", "root", "192.0.2.2", 22,
                                                                 "/k"))
    monkeypatch.setattr(move, "recent_requests", lambda log, now: 12)
    with pytest.raises(UsageError, match="12 request.*last hour.*pass --yes.*nothing was changed"):
        move_site.run(host, move_site.build_parser().parse_args(["shop", "--finish"]))
    assert host.actions == []


def test_a_receive_step_meets_one_still_running_and_changes_nothing(root):
    from siteops import registry
    host, _ = make_host(root, dry_run=False)
    lock = root / "var/lib/siteops/move/shop.lock"
    with registry.flock(lock, "the step still running", 0, "x"):
        with pytest.raises(Exception, match="receiving site shop is locked by another siteops "
                                            r"command \(pid .*the step still running\)"):
            move_site.run(host, move_site.build_parser().parse_args(
                ["shop", "--receive", "clean"]))
    assert not (root / "var/lib/siteops/move/shop").exists()
