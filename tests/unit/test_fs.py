"""open_in_root resolves paths inside a rootfs as if it were /: symlinks cannot lead out of it."""
import os

import pytest

from runtime.errors import SetupError
from runtime.fs import open_in_root


def where(root_fd, path):
    fd = open_in_root(root_fd, path, "test")
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "hosts").write_text("")
    (r / "data").mkdir()
    (tmp_path / "outside").write_text("secret")
    fd = os.open(r, os.O_PATH | os.O_DIRECTORY)
    yield r, fd
    os.close(fd)


def test_plain_path(root):
    r, fd = root
    assert where(fd, "/etc/hosts") == f"{r}/etc/hosts"


def test_absolute_symlink_stays_inside(root):
    r, fd = root
    os.symlink("/data", r / "etc" / "link")
    assert where(fd, "/etc/link") == f"{r}/data"
    os.symlink("/outside", r / "etc" / "evil")
    with pytest.raises(SetupError, match="No such file"):
        open_in_root(fd, "/etc/evil", "test")        # resolves to ROOT/outside, which does not exist


def test_dotdot_stops_at_the_root(root):
    r, fd = root
    os.symlink("../../../../../outside", r / "etc" / "up")
    with pytest.raises(SetupError):
        open_in_root(fd, "/etc/up", "test")
    os.symlink("../../../../etc/hosts", r / "data" / "h")
    assert where(fd, "/data/h") == f"{r}/etc/hosts"
    assert where(fd, "/../../etc/hosts") == f"{r}/etc/hosts"


def test_symlink_loop(root):
    r, fd = root
    os.symlink("/loop", r / "loop")
    with pytest.raises(SetupError, match="too many levels"):
        open_in_root(fd, "/loop", "test")


def test_file_as_directory(root):
    _r, fd = root
    with pytest.raises(SetupError, match="not a directory"):
        open_in_root(fd, "/etc/hosts/x", "test")


def test_resolve_in_root_keeps_links_inside(tmp_path):
    from runtime.fs import resolve_in_root
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "real.so").write_text("x")
    (tmp_path / "lib" / "abs.so").symlink_to("/lib/real.so")           # absolute: restarts at the tree
    (tmp_path / "lib" / "up.so").symlink_to("../../../../lib/real.so")  # .. stops at the tree
    (tmp_path / "lib" / "out").symlink_to("/etc/passwd")                # the host's file is not reached
    (tmp_path / "lib" / "loop").symlink_to("loop")
    real = str(tmp_path / "lib" / "real.so")
    assert resolve_in_root(str(tmp_path), "/lib/abs.so") == real
    assert resolve_in_root(str(tmp_path), "/lib/up.so") == real
    assert resolve_in_root(str(tmp_path), "/lib/out") is None
    assert resolve_in_root(str(tmp_path), "/lib/loop") is None
    assert resolve_in_root(str(tmp_path), "/nope") is None
