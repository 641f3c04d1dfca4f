"""Hostile layers never write outside their layer directory; each is refused with one line, exit 125, and
nothing stored. An ID outside the user's subordinate range is one line naming the fix."""
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from image_helpers import add_image, chown_tree, layer, member, one_error_line, pirun, root, write_index  # noqa: F401

SYM, LNK, DIR = tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE


def build(path, members, tag="evil:1"):
    path.mkdir()
    desc, _ = add_image(path, [layer(members)], {"Cmd": ["/bin/true"]})
    write_index(path, [desc], tag)
    chown_tree(path)
    return path


def nothing_stored(root):
    recs = json.loads((root / "images.json").read_text())["images"] if (root / "images.json").exists() else []
    left = [p.name for p in (root / "layers").iterdir() if not p.name.endswith(".lock")] \
        if (root / "layers").exists() else []
    return recs == [] and left == []


@pytest.fixture
def target(shared_tmp):
    """A directory outside the store that a hostile layer aims at (writable by the test user, so only
    pirun's own checks keep it empty)."""
    t = shared_tmp / f"target-{uuid.uuid4().hex[:8]}"
    t.mkdir()
    chown_tree(t)
    return t


def hostile_cases(target):
    depth = "../" * 12
    t = str(target).lstrip("/")
    return {
        "dotdot": [member(f"{depth}{t}/evil", data=b"x")],
        "dotdot-inside": [member("a", DIR, mode=0o755), member(f"a/../../{t}/evil", data=b"x")],
        "symlink-then-write": [member("link", SYM, linkname=str(target)), member("link/evil", data=b"x")],
        "relative-symlink-then-write": [member("up", SYM, linkname=f"{depth}{t}"), member("up/evil", data=b"x")],
        "symlink-dir-chain": [member("d", DIR, mode=0o755), member("d/l", SYM, linkname="/"),
                              member(f"d/l/{t}/evil", data=b"x")],
        "hardlink-outside-dotdot": [member("h", LNK, linkname=f"{depth}{t}/secret")],
        "hardlink-outside-absolute": [member("h", LNK, linkname=f"{target}/secret")],
        "hardlink-through-symlink": [member("s", SYM, linkname=str(target)), member("h", LNK, linkname="s/secret")],
        "whiteout-dotdot": [member(f"{depth}{t}/.wh.secret")],
    }


@pytest.mark.parametrize("case", ["dotdot", "dotdot-inside", "symlink-then-write", "relative-symlink-then-write",
                                  "symlink-dir-chain", "hardlink-outside-dotdot", "hardlink-outside-absolute",
                                  "hardlink-through-symlink", "whiteout-dotdot"])
def test_hostile_member_is_refused(root, shared_tmp, target, case):
    (target / "secret").write_text("keep me\n")
    chown_tree(target)
    layout = build(shared_tmp / "evil", hostile_cases(target)[case])
    line = one_error_line(pirun(["load", "-i", layout], root))
    assert "fix:" in line
    assert sorted(p.name for p in target.iterdir()) == ["secret"]
    assert (target / "secret").read_text() == "keep me\n"
    assert nothing_stored(root)


def test_absolute_member_lands_inside_the_layer(root, shared_tmp, target):
    layout = build(shared_tmp / "abs", [member(f"{target}/abs", data=b"inside\n")])
    r = pirun(["load", "-i", layout], root)
    assert r.returncode == 0, r.stderr
    assert list(target.iterdir()) == []
    layers = [p for p in (root / "layers").iterdir() if len(p.name) == 64]
    assert (layers[0] / "diff" / str(target).lstrip("/") / "abs").read_text() == "inside\n"


def test_symlink_in_a_lower_layer_is_not_followed(root, shared_tmp, target):
    """Layer 1 has link -> TARGET; layer 2 writes link/evil: layer 2 gets its own directory."""
    path = shared_tmp / "two"
    path.mkdir()
    desc, _ = add_image(path, [layer([member("link", SYM, linkname=str(target))]),
                               layer([member("link", DIR, mode=0o755), member("link/evil", data=b"x")])],
                        {"Cmd": ["/bin/true"]})
    write_index(path, [desc], "two:1")
    chown_tree(path)
    r = pirun(["load", "-i", path], root)
    assert r.returncode == 0, r.stderr
    assert list(target.iterdir()) == []


def test_id_outside_the_map(root, shared_tmp):
    layout = build(shared_tmp / "bigid", [member("f", data=b"x", uid=70000, gid=70000)])
    line = one_error_line(pirun(["load", "-i", layout], root))
    assert "'f' is owned by 70000:70000, outside the 65537 user and group IDs mapped for you (0 to 65536)" in line
    assert "fix: give" in line and "usermod --add-subuids" in line
    assert nothing_stored(root)


def test_many_members_on_a_full_filesystem(shared_tmp):
    """A layer of 5000 files on a store of 2000 inodes (tmpfs, mounted here as root, used by the test
    user): ENOSPC is one line, nothing is stored, nothing is written elsewhere."""
    import subprocess
    mnt = shared_tmp / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,nr_inodes=2000,mode=755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        chown_tree(mnt)
        layout = build(shared_tmp / "many", [member("d", DIR, mode=0o755)] +
                       [member(f"d/f{i}", data=b"") for i in range(5000)])
        root = mnt / "store"
        line = one_error_line(pirun(["load", "-i", layout], root))
        assert "No space left on device" in line and "fix: free space" in line
        assert nothing_stored(root)
        assert not list((root / "tmp").iterdir())
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
