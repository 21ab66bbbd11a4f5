"""Root's file changes never follow a link or hard link planted by another user."""

import os
import stat

import pytest

from siteops import safefs
from siteops.errors import SiteopsError

from fakes import make_host


@pytest.fixture
def home(tmp_path):
    """A directory anyone can write, like a user's home or a site's releases/."""
    d = tmp_path / "home"
    d.mkdir()
    os.chmod(d, 0o777)
    secret = tmp_path / "secret"
    secret.write_text("root's secret\n")
    os.chmod(secret, 0o600)
    return d, secret


def test_a_planted_directory_link_is_refused_and_its_target_untouched(home):
    d, secret = home
    target = secret.parent / "sbin"
    target.mkdir()
    os.symlink(target, d / ".ssh")
    with pytest.raises(safefs.UnsafePath, match=r"refusing to touch .*\.ssh.*symlink"):
        safefs.ensure_dir(d / ".ssh", 0o700, os.getuid(), os.getgid())
    with pytest.raises(safefs.UnsafePath):
        safefs.write(d / ".ssh" / "authorized_keys", b"key\n", 0o600)
    assert stat.S_IMODE(target.stat().st_mode) != 0o700 and os.listdir(target) == []


def test_a_planted_file_link_is_not_read_and_is_replaced_not_followed(home):
    d, secret = home
    os.symlink(secret, d / "authorized_keys")
    with pytest.raises(safefs.UnsafePath):
        safefs.read(d / "authorized_keys")
    safefs.write(d / "authorized_keys", b"key\n", 0o600)  # the link itself is replaced
    assert secret.read_text() == "root's secret\n"
    assert not (d / "authorized_keys").is_symlink()


def test_a_hard_link_in_a_writable_directory_is_refused(home):
    d, secret = home
    os.link(secret, d / "authorized_keys")
    with pytest.raises(safefs.UnsafePath, match="hard link"):
        safefs.read(d / "authorized_keys")


def test_a_fifo_is_refused_without_blocking(home):
    d, _ = home
    os.mkfifo(d / "authorized_keys")
    with pytest.raises(safefs.UnsafePath, match="not a regular file"):
        safefs.read(d / "authorized_keys")


@pytest.mark.skipif(os.geteuid() != 0, reason="a root-only directory needs root")
def test_roots_own_links_in_root_only_directories_are_followed(tmp_path):
    live = tmp_path / "live"
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "cert1.pem").write_text("cert\n")
    live.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    os.symlink("../archive/cert1.pem", live / "cert.pem")
    assert safefs.read(live / "cert.pem") == b"cert\n"
    os.symlink(tmp_path / "archive", live / "dir")
    safefs.write(live / "dir" / "new", b"x", 0o644)
    assert (tmp_path / "archive" / "new").read_bytes() == b"x"


def test_host_write_and_ensure_dir_go_through_safefs(root, home):
    d, secret = home
    host, _ = make_host(root, dry_run=False)
    os.symlink(secret.parent, d / "logs")
    with pytest.raises(SiteopsError, match="refusing"):
        host.ensure_dir(d / "logs", 0o750)
    assert host.read(d / "missing") is None


def test_an_error_inside_a_validated_block_puts_every_file_back(root):
    host, runner = make_host(root, dry_run=False)
    conf = root / "etc/site.conf"
    conf.write_text("good\n")
    with pytest.raises(KeyboardInterrupt):
        with host.validated([conf, root / "etc/new.conf"], ["check"], "thing"):
            host.write(conf, "half-made\n")
            host.write(root / "etc/new.conf", "new\n")
            raise KeyboardInterrupt
    assert conf.read_text() == "good\n" and not (root / "etc/new.conf").exists()
    assert runner.calls == []  # never validated: nothing of the block is left to check


@pytest.mark.skipif(os.geteuid() != 0, reason="a root-only directory needs root")
def test_walks_remembered_walks_a_root_only_directory_once(tmp_path, monkeypatch):
    walks = []
    real = safefs._walk
    monkeypatch.setattr(safefs, "_walk", lambda path, create: walks.append(path) or
                        real(path, create))
    tmp_path.chmod(0o755)
    (tmp_path / "etc").mkdir(mode=0o755)
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared").chmod(0o777)  # a user could write here
    for d in ("etc", "shared"):
        (tmp_path / d / "a").write_text("a\n")
        (tmp_path / d / "b").write_text("b\n")
    with safefs.walks_remembered():
        with safefs.walks_remembered():  # nested: the outer one keeps them
            assert [safefs.read(tmp_path / "etc" / n) for n in "ab"] == [b"a\n", b"b\n"]
        assert safefs.read(tmp_path / "etc/a") == b"a\n"
        assert [safefs.read(tmp_path / "shared" / n) for n in "ab"] == [b"a\n", b"b\n"]
        kept = dict(safefs._remembered.fds)
    assert walks.count(tmp_path / "etc") == 1 and walks.count(tmp_path / "shared") == 2
    assert list(kept) == [str(tmp_path / "etc")]
    with pytest.raises(OSError):  # closed when it ended
        os.fstat(kept[str(tmp_path / "etc")][0])
    assert safefs.read(tmp_path / "etc/a") == b"a\n" and walks.count(tmp_path / "etc") == 2
