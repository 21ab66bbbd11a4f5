"""Box tier: a real booted systemd machine (Debian 12 and 13) per test module."""

import os

import pytest

from machine import Box, build_image


# Every box test runs on each suite: Debian 12 (bookworm) and 13 (trixie).
SUITES = os.environ.get("SITEOPS_BOX_SUITES", "bookworm trixie").split()


@pytest.fixture(scope="session", params=SUITES)
def image(request):
    if os.geteuid() != 0:
        pytest.fail("box tests need root (systemd-nspawn, mount)")
    return build_image(request.param)


@pytest.fixture(scope="module")
def box(image):
    machine = Box(image)
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()
