"""VM tier: a QEMU machine with a kernel of its own (Debian 13), for what the
nspawn box cannot show: per-site cgroup limits and SocketBind BPF rules."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "box"))  # machine.commit, apps

from qemu import VM, build_image  # noqa: E402


@pytest.fixture(scope="module")
def vm():
    if os.geteuid() != 0:
        pytest.fail("VM tests need root (the image is built with chroot)")
    machine = VM(build_image())
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()
