"""runtime/tools.py: the one lookup of host programs (launcher, network backends, --check)."""
import os

from runtime import tools


def exe(path, text="#!/bin/sh\nexit 0\n"):
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_setuid_helpers_never_come_from_path(tmp_path):
    fake = exe(tmp_path / "newuidmap")
    exe(tmp_path / "newgidmap")
    for name in ("newuidmap", "newgidmap"):
        found = tools.find(name, path=f"{tmp_path}:/usr/bin:/bin")
        assert found != str(tmp_path / name), "a $PATH entry shadowed a setuid helper"
        assert found is None or os.path.dirname(found) in tools.SYSTEM_DIRS
    assert tools.search_dirs("newuidmap", path=str(tmp_path)) == tools.SYSTEM_DIRS
    assert fake                     # the planted copy exists and is executable, it is just never chosen


def test_other_tools_follow_path_then_the_system_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "slirp4netns").write_text("not executable")
    (tmp_path / "b" / "slirp4netns").mkdir()                      # a directory is not a program
    first = exe(tmp_path / "slirp4netns")
    path = f"relative/dir::{tmp_path}/a:{tmp_path}/b:{tmp_path}:/usr/bin"
    assert tools.find("slirp4netns", path=path) == first
    dirs = tools.search_dirs("slirp4netns", path=path)
    assert dirs[:4] == (f"{tmp_path}/a", f"{tmp_path}/b", str(tmp_path), "/usr/bin")
    assert "relative/dir" not in dirs and "" not in dirs
    assert dirs[4:] == tuple(d for d in tools.SYSTEM_DIRS if d != "/usr/bin"), "each directory once"
    assert tools.find("no-such-tool-anywhere", path=path) is None


def test_environment_path_is_the_default(tmp_path, monkeypatch):
    fake = exe(tmp_path / "pasta")
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert tools.find("pasta") == fake
    monkeypatch.setenv("PATH", "")
    assert tools.find("pasta") in (None, *(f"{d}/pasta" for d in tools.SYSTEM_DIRS))
