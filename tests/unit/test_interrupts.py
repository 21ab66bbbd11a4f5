"""Ctrl-C and SIGTERM take the same path as a failed check: what was not
checked is put back, a put-back is not cut short, what cannot be put back is
named, nginx's pending-reload note stays unless its files are known back, and
the command ends with 130 or 143."""

import json
import os
import signal
from pathlib import Path

import pytest

from siteops import cli, nginx, signals
from siteops import host as siteops_host
from siteops.ops import deploy as deploy_op
from siteops.errors import Interrupted, PutBackFailed, SiteopsError
from siteops.model import Release

from fakes import CHANGES, FakeRunner, Rule, make_host


def interrupting(runner, program: str, signum: int = signal.SIGINT):
    """A runner that is interrupted (as by Ctrl-C or SIGTERM) while program runs."""
    def run(argv, **kw):
        if argv[0] == program:
            raise Interrupted(signum)
        return runner(argv, **kw)
    return run


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_the_check_puts_the_unchecked_file_back(root, signum):
    host, runner = make_host(root, dry_run=False)
    host.runner = interrupting(runner, "check", signum)
    path, new = root / "etc/app.conf", root / "etc/new.conf"
    path.write_text("checked before\n")
    with pytest.raises(Interrupted) as stopped:
        with host.validated([path, new], ["check"], "thing") as outcome:
            host.write(path, "unchecked\n")
            host.write(new, "unchecked\n")
    assert stopped.value.signum == signum
    assert path.read_text() == "checked before\n" and not new.exists()
    assert outcome.restored is True


def test_a_path_that_cannot_be_put_back_is_named_and_the_others_still_are(root, monkeypatch):
    host, _ = make_host(root, [(["check"], 1, "", "broken")], dry_run=False)
    first, second = root / "etc/first.conf", root / "etc/second.conf"
    first.write_text("1\n")
    second.write_text("2\n")
    put_back = host.put_back

    def failing(path, snap):
        if path == first:
            raise OSError(30, "Read-only file system")
        put_back(path, snap)
    monkeypatch.setattr(host, "put_back", failing)
    with pytest.raises(PutBackFailed) as err:
        with host.validated([first, second], ["check"], "thing") as outcome:
            host.write(first, "x\n")
            host.write(second, "y\n")
    message = str(err.value)
    assert "`check` failed" in message  # the original error is not hidden
    assert f"could not be put back as they were: {first} ([Errno 30] Read-only" in message
    assert second.read_text() == "2\n" and outcome.restored is False


def test_signals_inside_a_put_back_wait_for_its_end(root):
    previous = {s: signal.signal(s, signals.on_interrupt) for s in signals.INTERRUPTS}
    try:
        done = []
        with pytest.raises(Interrupted) as stopped:
            with signals.uninterrupted():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the whole block ran")
        assert done == ["the whole block ran"] and stopped.value.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) is signals.on_interrupt
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def nginx_host(root, runner_wraps=None):
    host, runner = make_host(root, [(["nginx", "-v"], 0, "", "nginx version: nginx/1.22.1"),
                                    *CHANGES], dry_run=False)
    if runner_wraps:
        host.runner = runner_wraps(runner)
    site_file = root / "etc/nginx/sites-available/shop.conf"
    site_file.parent.mkdir(parents=True)
    site_file.write_text("loaded\n")
    return host, runner, site_file


def test_an_interrupted_nginx_check_restores_the_file_and_takes_its_note_away(root):
    host, _, site_file = nginx_host(root, lambda r: interrupting(r, "nginx"))
    with pytest.raises(Interrupted):
        nginx.converge(host, {site_file: "unchecked\n"})
    assert site_file.read_text() == "loaded\n"
    assert not nginx.reload_pending(host)  # nginx still runs what is on disk


def test_a_put_back_that_fails_leaves_the_reload_note_for_the_next_run(root, monkeypatch):
    host, runner, site_file = nginx_host(root, lambda r: interrupting(r, "nginx"))
    monkeypatch.setattr(host, "put_back", lambda path, snap: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    with pytest.raises(PutBackFailed, match="shop.conf .*No space left"):
        nginx.converge(host, {site_file: "unchecked\n"})
    assert nginx.reload_pending(host)  # the next run checks and reloads
    host.runner = runner
    nginx.converge(host, {site_file: "unchecked\n"})
    assert ["nginx", "-t", "-q"] in runner.calls and not nginx.reload_pending(host)


def test_a_reload_nginx_does_not_take_is_an_error_and_stays_due(root, monkeypatch):
    """The master keeps its old configuration when a reload fails on what
    `nginx -t` cannot foresee (out of descriptors): no new worker comes. Said,
    with the master's reason, and the reload stays due."""
    monkeypatch.setattr(nginx, "RELOAD_TIMEOUT", 0.2)
    host, _, site_file = nginx_host(root)
    (root / "run").mkdir()
    (root / "run/nginx.pid").write_text("50\n")
    (root / "var/log/nginx").mkdir(parents=True)
    (root / "var/log/nginx/error.log").write_text(
        "2026/12/08 00:44:56 [notice] 50#50: signal process started\n"
        "2026/12/08 00:44:56 [emerg] 50#50: open() \"/srv/sites/s252/shared/logs/"
        "nginx-error.log\" failed (24: Too many open files)\n")
    host.runner = FakeRunner([(["ps", "-o", "pid=,args=", "--ppid", "50"], 0,
                               "61 nginx: worker process\n62 nginx: worker process\n"),
                              *CHANGES])
    with pytest.raises(SiteopsError, match=r"nginx kept its old configuration: no new worker "
                                           r"within 0.2 s .*\(24: Too many open files\)\); the "
                                           "reload stays due"):
        nginx.converge(host, {site_file: "new\n"})
    assert nginx.reload_pending(host)
    # New workers: the reload took, and its note goes.
    answers = iter(["61 nginx: worker process\n", "63 nginx: worker process\n"])
    host.runner = lambda argv, **kw: siteops_host.Result(
        argv, 0, next(answers) if argv[0] == "ps" else "")
    nginx.reload(host)
    assert not nginx.reload_pending(host)


def test_the_workers_serving_are_read_from_proc_where_the_kernel_lists_children(root, monkeypatch):
    host, _ = make_host(root)
    (root / "run").mkdir()
    (root / "run/nginx.pid").write_text("50\n")
    (root / "proc/50/task/50").mkdir(parents=True)
    (root / "proc/50/task/50/children").write_text("61 62 63 ")
    for pid, title in (("61", "nginx: worker process"), ("62", "nginx: worker process is "
                       "shutting down"), ("63", "nginx: cache manager process")):
        (root / "proc" / pid).mkdir()
        (root / "proc" / pid / "cmdline").write_bytes(title.encode() + b"\0" * 20)
    assert nginx.serving_workers(host) == {"61"}  # no ps: the fake runner knows none
    # A worker that exits while it is read (ESRCH) is not serving.
    real = nginx.safefs.read

    def exited(path, *a, **kw):
        if path.name == "cmdline" and path.parent.name == "61":
            raise ProcessLookupError(3, "No such process")
        return real(path, *a, **kw)
    monkeypatch.setattr(nginx.safefs, "read", exited)
    assert nginx.serving_workers(host) == set()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_command_interrupted_says_so_and_exits_128_plus_the_signal(root, capsys, signum,
                                                                    code):
    host, _ = make_host(root)

    def body(_host, _args):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal did not stop the command")
    parser = cli.parser("thing", "a command")
    assert cli.main("thing", parser, body, ["--dry-run"], host) == code
    err = capsys.readouterr().err
    assert f"thing: interrupted by {signal.Signals(signum).name}" in err
    assert signal.getsignal(signal.SIGTERM) is not signals.on_interrupt  # handlers put back


def test_a_single_file_is_checked_as_a_candidate_before_it_takes_its_place(root):
    host, runner = make_host(root, [(["visudo"], 1, "", "syntax error near line 2")],
                             dry_run=False)
    path = root / "etc/sudoers.d/siteops-deploy"
    path.parent.mkdir(parents=True)
    path.write_text("working\n")
    with pytest.raises(Exception, match="fails `visudo`'s check, so it was not written: "
                                        "syntax error near line 2"):
        host.write_checked(path, "broken\n", ["visudo", "-c", "-f", siteops_host.CANDIDATE], "sudoers")
    candidate = root / "var/lib/siteops/candidates/siteops-deploy"
    assert runner.calls == [["visudo", "-c", "-f", str(candidate)]]
    assert path.read_text() == "working\n" and not candidate.exists()
    runner.rules[:] = [Rule(["visudo"])]
    assert host.write_checked(path, "fine\n", ["visudo", "-c", "-f", siteops_host.CANDIDATE], "x")
    assert path.read_text() == "fine\n" and not candidate.exists()
    assert host.write_checked(path, "fine\n", ["visudo", "-c", "-f", siteops_host.CANDIDATE], "x") \
        is False and len(runner.calls) == 2  # unchanged: not checked again


def test_a_deploy_stopped_after_its_switch_keeps_its_release_live(root):
    (root / "var/lib/siteops").mkdir(parents=True)
    site = {"name": "shop", "slot": 0, "state": "ready", "components": ["frontend"],
            "ports": {"frontend": 3100, "redis": 5000},
            "live": {"release": "20261130T090000Z", "offset": 1},
            "releases": {"20261130T090000Z": {"result": "building"}}}
    (root / "var/lib/siteops/registry.json").write_text(
        json.dumps({"version": 2, "sites": {"shop": site}}))
    host, runner = make_host(root, dry_run=False)
    deploy_op.fail(host, "shop", "20261130T090000Z", Release(), Interrupted(signal.SIGTERM))
    assert host.actions == [] and runner.calls == []  # not marked failed, not deleted


def test_a_command_siteops_runs_dies_with_siteops_even_by_kill_9(tmp_path):
    """Children run in a session of their own (a terminal's Ctrl-C reaches only
    siteops), yet never outlive it: an orphan would race the run that finishes
    the job (found by the remove-site box test, killed during its backup)."""
    import subprocess
    import sys
    import time
    marker = tmp_path / "child.pid"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from siteops import host; "
            "host.run_command(['sh', '-c', 'echo $$ > ' + sys.argv[2] + '; exec sleep 30'])")
    parent = subprocess.Popen([sys.executable, "-c", code, str(Path(siteops_host.__file__).parents[1]),
                               str(marker)])
    for _ in range(100):
        if marker.exists() and marker.read_text().strip():
            break
        time.sleep(0.05)
    child = int(marker.read_text())
    assert os.getsid(child) == child  # a session of its own
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived siteops")
