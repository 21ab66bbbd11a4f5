"""move-site: how the transfer repository is reached, what audit says of a
site being moved, and the refusals that change nothing (the box tier moves a
real site between two machines)."""

import pytest

from fakes import make_host
from siteops import checks, fleet, nginx
from siteops.commands import move_site
from siteops.errors import UsageError
from siteops.model import Move, Site


def test_the_transfer_repository_is_reached_through_the_pinned_ssh(root):
    host, _ = make_host(root)
    remote = fleet.Remote("big", "root", "192.0.2.2", 2222, "/root/.ssh/fleet")
    repo, options = move_site.transfer_repository(host, remote, "shop")
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
    f = checks.move_check(Site("shop", ["shop.test"], move=move, held=held))
    assert f.severity == severity and words in f.message and f.id == "site.shop.move"


def test_only_the_forward_stage_forwards():
    for stage in ("copying", "copied", "frozen", "aborting"):
        site = Site("shop", ["shop.test"], move=Move("big", "192.0.2.2", stage))
        assert "192.0.2.2" not in nginx.site_config(site, (1, 26, 3), None, "/srv/sites/shop/logs")


@pytest.mark.parametrize("argv, message", [
    (["shop"], "give one of --to HOST, --finish, --abort"),
    (["shop", "--to", "big", "--finish"], "give one of"),
    (["shop", "--finish", "--abort"], "give one of"),
])
def test_one_action_at_a_time(root, argv, message):
    host, _ = make_host(root)
    with pytest.raises(UsageError, match=message):
        move_site.run(host, move_site.build_parser().parse_args(argv))
