"""A load killed at any point (kill -9) or stopped by a full disk leaves no partial image and no process;
`image prune` reclaims what is left; the next load works."""
import json
import os
import signal
import subprocess
import time

from conftest import user_env, user_kwargs
from image_helpers import (PIRUN, add_image, chown_tree, image_dir, layer, member, one_error_line, pirun,  # noqa: F401
                           root, test_layout, write_index)


def processes_mentioning(text):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def listed(root):
    r = pirun(["images", "-q", "--no-trunc"], root)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_kill_9_during_load(root, test_layout):
    ids = set()
    for delay in (0.02, 0.08, 0.15, 0.25, 0.4, 0.6):
        p = subprocess.Popen([str(PIRUN), "--root", str(root), "load", "-i", str(test_layout)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=user_env(), cwd="/",
                             **user_kwargs())
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 5
        while processes_mentioning(str(root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_mentioning(str(root)) == []        # the user-namespace helper died with it
        images = listed(root)
        assert len(images) <= 1
        if images:                                            # complete, then: it runs
            ids.update(images)
            r = pirun(["run", "--pull=never", "--net", "none", "test:1", "cat", "/etc/top"], root)
            assert r.returncode == 0 and r.stdout == "top layer\n", r.stderr
            assert pirun(["rmi", "test:1"], root).returncode == 0
    assert pirun(["image", "prune"], root).returncode == 0
    assert os.listdir(root / "tmp") == []
    assert [n for n in os.listdir(root / "layers")] == []
    assert pirun(["load", "-i", test_layout], root).returncode == 0
    assert pirun(["run", "--pull=never", "--net", "none", "test:1", "cat", "/etc/top"], root).stdout == "top layer\n"


def test_enospc_during_unpack(shared_tmp):
    """The store on a 3 MB tmpfs (mounted here as root, used by the test user), a 4 MB layer."""
    mnt = shared_tmp / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=755", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    try:
        chown_tree(mnt)
        layout = shared_tmp / "big"
        layout.mkdir()
        desc, _ = add_image(layout, [layer([member("big", data=os.urandom(4 << 20))])], {"Cmd": ["true"]})
        write_index(layout, [desc], "big:1")
        chown_tree(layout)
        root = mnt / "store"
        line = one_error_line(pirun(["load", "-i", layout], root))
        assert "No space left on device" in line and f"free space under {root}" in line
        recs = json.loads((root / "images.json").read_text())["images"] if (root / "images.json").exists() else []
        assert recs == []
        assert [n for n in os.listdir(root / "layers") if not n.endswith(".lock")] == []
        assert os.listdir(root / "tmp") == []
        used = os.statvfs(mnt)
        assert (used.f_blocks - used.f_bfree) * used.f_frsize < 256 << 10     # the partial layer is gone
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
