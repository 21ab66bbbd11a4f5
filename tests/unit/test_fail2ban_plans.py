"""How bootstrap brings fail2ban to new jail settings: in place when the
server answers, by a start when it does not (never a restart of a server
whose socket is not there yet)."""

from siteops import fail2ban
from siteops.host import Result

from fakes import make_host, planned_commands


def plan(root, rules, written=False):
    host, runner = make_host(root, rules)
    if written:
        fail2ban.ensure(host)
    else:
        fail2ban.reload(host)
    return planned_commands(host), runner


def test_new_jails_reach_an_answering_server_by_a_reload_in_place(tmp_path):
    commands, _ = plan(tmp_path, [(["systemctl", "is-active"], 0), (["fail2ban-client", "ping"], 0),
                                  (["fail2ban-client", "-t"], 0)], written=True)
    assert commands == ["systemctl enable fail2ban",
                        "fail2ban-client reload --restart --all"]


def test_a_stopped_or_failed_server_is_reset_and_started(tmp_path):
    commands, runner = plan(tmp_path, [(["systemctl", "is-active"], 3), (["fail2ban-client", "-t"], 0)],
                            written=True)
    assert commands == ["systemctl enable fail2ban",
                        "systemctl reset-failed fail2ban", "systemctl restart fail2ban"]
    assert ["fail2ban-client", "ping"] not in runner.calls


def test_a_server_still_opening_its_socket_is_waited_for(tmp_path, monkeypatch):
    answers = iter([1, 1, 0])
    host, runner = make_host(tmp_path, [(["systemctl", "is-active"], 0)])
    real = host.runner

    def pinged_in_turn(argv, **kw):
        if argv[:2] == ["fail2ban-client", "ping"]:
            runner.calls.append(list(argv))
            return Result(list(argv), next(answers))
        return real(argv, **kw)
    host.runner = pinged_in_turn
    monkeypatch.setattr(fail2ban.time, "sleep", lambda s: None)
    fail2ban.reload(host)
    assert runner.calls.count(["fail2ban-client", "ping"]) == 3
    assert planned_commands(host) == ["fail2ban-client reload nginx-limit-req"]


def test_a_new_site_log_does_not_start_a_stopped_server(tmp_path):
    commands, _ = plan(tmp_path, [(["systemctl", "is-active"], 3)])
    assert commands == []


LOG = "/srv/sites/shop/shared/logs/nginx-error.log"


def test_a_new_sites_log_is_added_to_the_running_jail_in_one_call(tmp_path):
    host, runner = make_host(tmp_path, [(["systemctl", "is-active"], 0),
                                        (["fail2ban-client", "set"], 0)], dry_run=False)
    fail2ban.watch(host, LOG)
    assert planned_commands(host) == [
        f"fail2ban-client set nginx-limit-req addlogpath {LOG} tail"]
    assert ["fail2ban-client", "ping"] not in runner.calls


def test_a_log_the_server_does_not_take_yet_is_read_by_a_reload_once_it_answers(tmp_path):
    host, _ = make_host(tmp_path, [(["systemctl", "is-active"], 0),
                                   (["fail2ban-client", "set"], 255, "", "Failed to access socket"),
                                   (["fail2ban-client", "ping"], 0),
                                   (["fail2ban-client", "reload"], 0)], dry_run=False)
    fail2ban.watch(host, LOG)
    assert planned_commands(host) == [
        f"fail2ban-client set nginx-limit-req addlogpath {LOG} tail",
        "fail2ban-client reload nginx-limit-req"]


def test_a_new_sites_log_leaves_a_stopped_server_stopped(tmp_path):
    host, runner = make_host(tmp_path, [(["systemctl", "is-active"], 3)], dry_run=False)
    fail2ban.watch(host, LOG)
    assert planned_commands(host) == [] and all(c[0] != "fail2ban-client" for c in runner.calls)
