"""VM tier: a QEMU machine with a kernel of its own (Debian 13), for what the
nspawn box cannot show: per-site cgroup limits, SocketBind BPF rules, kernel
settings, modules and auditd. One VM for the whole tier (a boot under TCG
costs a minute): bootstrapped, with two deployed sites, shop and blog."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "box"))  # machine.commit, apps

from qemu import VM, build_image  # noqa: E402


@pytest.fixture(scope="session")
def vm():
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (the image is built with chroot)")
    machine = VM(build_image())
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()


@pytest.fixture(scope="session")
def host(vm):
    vm.siteops("bootstrap")
    vm.two_sites({})
    return vm
