"""A hostile rootfs: symlinks planted where the runtime mounts or writes (/etc/hostname, /etc/hosts,
/etc/resolv.conf, /proc, /dev, /sys, /dev entries, volume targets, the workdir) pointing outside the rootfs,
absolute and `../..`. Every run either stays inside the rootfs or fails cleanly (125, one line, no traceback);
no host file is read or written through the links; the rootfs on disk and the host's mount table are unchanged.

The rootfs copies live in /tmp/pirun-hostile-XXXX/rootfs, so `../canary` from the rootfs's top level, or
`../../canary` from its /etc, names the host canary beside it, and an absolute link to the canary's host path
names a path that does not exist inside the rootfs (unless the test creates it there).
"""
import os
from pathlib import Path

import pytest

from conftest import container_user, mount_table, run
from sec_helpers import Canary, one_line_error, user_rootfs  # noqa: F401  (fixture)


def _own(path):
    _n, uid, gid, _h = container_user()
    os.lchown(path, uid, gid)


def _link(rootfs, rel, target):
    p = Path(rootfs) / rel
    if p.is_dir() and not p.is_symlink():
        import shutil
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
    os.symlink(target, p)
    _own(p)
    return p


@pytest.fixture
def canary(user_rootfs):
    return Canary(user_rootfs.parent)


def _escape_targets(rootfs, canary, depth):
    """Ways to name the host canary from a link `depth` levels below the rootfs's top."""
    return {
        "absolute": str(canary.path),
        "relative": "../" * (depth + 1) + canary.path.name,
        "deep-relative": "../" * (depth + 12) + str(canary.path).lstrip("/"),
    }


@pytest.mark.parametrize("name", ["hostname", "hosts", "resolv.conf"])
@pytest.mark.parametrize("kind", ["absolute", "relative", "deep-relative"])
def test_etc_file_links_do_not_reach_the_host(user_rootfs, canary, name, kind):
    target = _escape_targets(user_rootfs, canary, 1)[kind]
    _link(user_rootfs, f"etc/{name}", target)
    mounts = mount_table()
    r = run(["/bin/sh", "-c", f"cat /etc/{name}; echo written > /etc/{name}; echo done"], rootfs=user_rootfs)
    if r.returncode == 125:
        line = one_line_error(r)
        assert f"/etc/{name}" in line, line
    else:
        # the link was resolved inside the rootfs: there must then be a file there, and it is not the canary
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert "host canary" not in r.stdout
    canary.assert_untouched()
    assert mount_table() == mounts


@pytest.mark.parametrize("kind", ["absolute", "relative", "deep-relative"])
def test_etc_links_resolve_inside_the_rootfs(user_rootfs, canary, kind):
    """The link's target, read as if the rootfs were /, exists in the rootfs: the generated file is bound there
    (in the container's mount namespace only); the file on disk and the host canary stay as they were."""
    target = _escape_targets(user_rootfs, canary, 1)[kind]
    inside = user_rootfs / ("canary" if kind == "relative" else str(canary.path).lstrip("/"))
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_text("inside decoy\n")
    for p in [inside] + list(inside.parents):
        if p == user_rootfs.parent:
            break
        _own(p)
    _link(user_rootfs, "etc/hostname", target)
    r = run(["--hostname", "hostile", "/bin/sh", "-c", "cat /etc/hostname"], rootfs=user_rootfs)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hostile\n"
    assert inside.read_text() == "inside decoy\n"
    canary.assert_untouched()


@pytest.mark.parametrize("name", ["proc", "dev", "sys"])
@pytest.mark.parametrize("target", ["/", "..", "../..", "/tmp", "etc"])
def test_symlinked_proc_dev_sys_are_refused(user_rootfs, canary, name, target):
    _link(user_rootfs, name, target)
    mounts = mount_table()
    r = run(["/bin/sh", "-c", "echo ran"], rootfs=user_rootfs)
    line = one_line_error(r)
    assert f"/{name}" in line and "symlink" in line, line
    canary.assert_untouched()
    assert mount_table() == mounts


@pytest.mark.parametrize("entry", ["null", "zero", "tty", "pts", "shm", "ptmx", "fd"])
def test_dev_entries_in_the_rootfs_are_never_used(user_rootfs, canary, entry):
    _link(user_rootfs, f"dev/{entry}", "../" * 3 + canary.path.name)
    r = run(["/bin/sh", "-c", "echo x > /dev/null; head -c 1 /dev/zero | wc -c; ls -A /dev | wc -l"],
            rootfs=user_rootfs)
    assert r.returncode == 0, r.stderr
    canary.assert_untouched()


@pytest.mark.parametrize("kind", ["absolute", "relative", "deep-relative", "intermediate"])
def test_volume_target_links_stay_inside(user_rootfs, canary, shared_tmp, kind):
    vol = shared_tmp / "vol"
    vol.mkdir()
    _own(vol)
    (vol / "from-volume").write_text("volume content\n")
    outside = canary.path.parent / "outside-dir"        # a host directory beside the rootfs
    outside.mkdir()
    _own(outside)
    before = sorted(os.listdir(outside))
    if kind == "intermediate":
        _link(user_rootfs, "opt", "../outside-dir")        # /opt -> ../outside-dir, target /opt/x
        (user_rootfs / "outside-dir" / "x").mkdir(parents=True)
        target = "/opt/x"
    else:
        link = {"absolute": str(outside), "relative": "../outside-dir",
                "deep-relative": "../" * 12 + str(outside).lstrip("/")}[kind]
        _link(user_rootfs, "mnt", link)
        target = "/mnt"
    mounts = mount_table()
    r = run(["-v", f"{vol}:{target}", "/bin/sh", "-c", f"cat {target}/from-volume && echo new > {target}/made"],
            rootfs=user_rootfs)
    if r.returncode == 125:
        one_line_error(r)
    else:
        assert r.returncode == 0, r.stderr
        assert r.stdout == "volume content\n"
        assert (vol / "made").read_text() == "new\n"       # the write went to the volume, nowhere else
    assert sorted(os.listdir(outside)) == before, "a mount or write landed in a host directory"
    canary.assert_untouched()
    assert mount_table() == mounts


@pytest.mark.parametrize("link", ["absolute", "relative", "deep-relative"])
def test_workdir_link_stays_inside(user_rootfs, canary, link):
    target = {"absolute": str(canary.path.parent), "relative": "..",
              "deep-relative": "../" * 12 + str(canary.path.parent).lstrip("/")}[link]
    _link(user_rootfs, "work", target)
    r = run(["-w", "/work", "/bin/sh", "-c", f"pwd; ls -A; cat {canary.path.name}; echo x > {canary.path.name}"],
            rootfs=user_rootfs)
    if r.returncode == 125:
        one_line_error(r)
    assert "host canary" not in r.stdout
    canary.assert_untouched()


@pytest.mark.parametrize("how", ["etc-absolute", "etc-relative", "etc-loop", "hostname-dir", "hostname-fifo",
                                 "hosts-dangling", "hostname-to-proc"])
def test_odd_etc_shapes_fail_cleanly_or_stay_inside(user_rootfs, canary, how):
    etc = user_rootfs / "etc"
    if how == "etc-absolute":
        _link(user_rootfs, "etc", "/etc")                       # loops on itself inside the rootfs
    elif how == "etc-relative":
        _link(user_rootfs, "etc", "../../../../../etc")
    elif how == "etc-loop":
        _link(user_rootfs, "etc/hosts", "hosts2")
        _link(user_rootfs, "etc/hosts2", "hosts")
    elif how == "hostname-dir":
        (etc / "hostname").unlink()
        (etc / "hostname").mkdir()
        _own(etc / "hostname")
    elif how == "hostname-fifo":
        (etc / "hostname").unlink()
        os.mkfifo(etc / "hostname")
        _own(etc / "hostname")
    elif how == "hosts-dangling":
        _link(user_rootfs, "etc/hosts", "/no/such/file")
    elif how == "hostname-to-proc":
        _link(user_rootfs, "etc/hostname", "/proc/sys/kernel/hostname")
    mounts = mount_table()
    r = run(["/bin/sh", "-c", "cat /etc/hostname; echo ok"], rootfs=user_rootfs, timeout=20)
    if r.returncode != 0:
        one_line_error(r)
    canary.assert_untouched()
    assert mount_table() == mounts
    with open("/etc/hostname") as f:
        assert f.read().strip() != "myhost", "the host's /etc/hostname was overwritten"
