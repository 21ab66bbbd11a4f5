"""The one-command demo (tests/box/try) as a newcomer runs it, without a
terminal: the demo's output, --keep/--enter/--remove, an interrupt, and
nothing left mounted or running afterwards. tests/box/demo.sh is also the
Vagrantfile's provisioning, so this is the Vagrant path too."""

import os
import re
import signal
import subprocess
import time

from machine import REPO

TRY = str(REPO / "tests/box/try")


def boxes() -> set[str]:
    """try's mounted overlays and running nspawn machines (other tests' boxes,
    in the other lane, come and go meanwhile: theirs are siteops-box-*)."""
    mounts = {line.split()[1] for line in open("/proc/mounts") if "siteops-try-" in line}
    procs = subprocess.run(["pgrep", "-af", "systemd-nspawn"], capture_output=True,
                           text=True).stdout
    return mounts | {m for m in re.findall(r"-D (\S*siteops-try-\S+)", procs)}


def run(*args, timeout=900):
    return subprocess.run([TRY, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


def test_the_demo_shows_two_sites_and_leaves_nothing_behind():
    before = boxes()
    res = run()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for site in ("shop", "blog"):
        assert re.search(rf"^\$ curl -H 'Host: {site}.test' http://127.0.0.1/\n"
                         rf"Hello from {site}, release \d{{8}}T\d{{6}}Z$", out, re.M), out
    assert re.search(r"^NAME\s+SLOT\s+PORTS", out, re.M)
    assert re.search(r"^shop\s+0\s+3100,5000\s+shop.test", out, re.M), out
    assert re.search(r"^audit (OK|WARNING): \d+ checks, \d+ ok, \d+ warning\(s\), 0 critical$",
                     out, re.M), out
    assert boxes() == before


def test_keep_then_enter_then_remove():
    before = boxes()
    res = run("--keep")
    try:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "enter it:   sudo" in res.stdout and "--remove" in res.stdout
        assert boxes() != before  # still running
        listed = run("--enter", "--command", "sites list")
        assert listed.returncode == 0 and re.search(r"^blog\s+1\s", listed.stdout, re.M)
        again = run("--keep")
        assert again.returncode != 0 and "already running" in again.stderr
    finally:
        gone = run("--remove")
    assert gone.returncode == 0 and "powered off and removed" in gone.stdout
    assert boxes() == before
    assert run("--enter").returncode != 0


def test_an_interrupt_powers_the_box_off_and_unmounts_it():
    before = boxes()
    # As from a terminal: Ctrl-C's default, even if this run was started with
    # SIGINT ignored (a background job of a script).
    proc = subprocess.Popen([TRY], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen = ""
    deadline = time.monotonic() + 600
    while "==> bootstrap" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    time.sleep(3)  # bootstrap is under way
    os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C does: the whole foreground group
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, seen + rest
    assert boxes() == before


def test_the_vagrantfile_provisions_with_the_same_script():
    text = (REPO / "Vagrantfile").read_text()
    assert 'config.vm.provision "shell", path: "tests/box/demo.sh"' in text
    assert '"SITEOPS_SRC" => "/opt/siteops-src"' in text
