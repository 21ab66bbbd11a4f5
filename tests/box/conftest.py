"""Box tier: a real booted systemd machine with bootstrap run in it once."""

import os

import pytest

from machine import Box, build_image


@pytest.fixture(scope="session")
def image():
    if os.geteuid() != 0:
        pytest.fail("box tests need root (systemd-nspawn, mount)")
    return build_image()


@pytest.fixture(scope="module")
def box(image):
    machine = Box(image)
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()
