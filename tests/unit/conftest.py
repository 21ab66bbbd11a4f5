"""Unit tier: no root, no server. A recording fake runner stands in for every
external command; hosts run in dry-run mode over a temporary root."""

import pytest

from fakes import DEBIAN_12


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(DEBIAN_12)
    return tmp_path
