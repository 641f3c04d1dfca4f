"""pirun images, rmi, image prune, system df; containers' writable layers as debris after kill -9."""
import json
import os
import signal
import subprocess
import time

from conftest import user_env, user_kwargs, wait_for
from image_helpers import PIRUN, chown_tree, image_dir, loaded, one_error_line, pirun, root, test_layout  # noqa: F401

RUN = ["run", "--pull=never", "--net", "none"]


def records(root):
    return json.loads((root / "images.json").read_text())["images"]


def layer_dirs(root):
    return sorted(p.name for p in (root / "layers").iterdir() if len(p.name) == 64)


def start(root, args):
    return subprocess.Popen([str(PIRUN), "--root", str(root)] + RUN + args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=user_env(), cwd="/", **user_kwargs())


def containers(root):
    return sorted(p.name for p in (root / "containers").iterdir())


def test_images_lists_names_and_ids(loaded):
    r = pirun(["images"], loaded)
    assert r.returncode == 0
    head, row = r.stdout.splitlines()
    assert head.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert row.split()[:3] == ["localhost/test", "1", records(loaded)[0]["id"][:12]]
    assert pirun(["images", "-q"], loaded).stdout == records(loaded)[0]["id"][:12] + "\n"


def test_rmi_untags_then_deletes(loaded, test_layout):
    assert pirun(["load", "-i", f"oci:{test_layout}"], loaded).returncode == 0
    r = pirun(["import", f"oci:{test_layout}", "other:2"], loaded)
    assert r.returncode == 0, r.stderr
    assert sorted(records(loaded)[0]["names"]) == ["localhost/other:2", "localhost/test:1"]
    r = pirun(["rmi", "other:2"], loaded)
    assert r.returncode == 0 and r.stdout == "Untagged: localhost/other:2\n", r.stderr
    assert len(layer_dirs(loaded)) == 3
    r = pirun(["rmi", "test:1"], loaded)
    assert r.returncode == 0 and "Deleted: " in r.stdout, r.stderr
    assert records(loaded) == [] and layer_dirs(loaded) == []
    assert "test" not in pirun(["images"], loaded).stdout
    line = one_error_line(pirun(["rmi", "test:1"], loaded))
    assert "not in the store" in line


def test_rmi_of_a_used_image_is_refused(loaded):
    p = start(loaded, ["test:1", "sleep", "30"])
    try:
        wait_for(lambda: containers(loaded), what="the container's writable layer")
        cid = containers(loaded)[0]
        line = one_error_line(pirun(["rmi", "test:1"], loaded))
        assert f"in use by container {cid[:12]}" in line
        assert len(records(loaded)) == 1
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert containers(loaded) == []
    assert pirun(["rmi", "test:1"], loaded).returncode == 0


def test_kill_9_leaves_a_layer_the_next_command_removes(loaded):
    p = start(loaded, ["-u", "0", "test:1", "sh", "-c", "echo x > /root/x; sleep 30"])
    wait_for(lambda: containers(loaded), what="the container's writable layer")
    time.sleep(0.5)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    from conftest import descendants  # noqa: F401  (the container dies with run's process: pdeathsig)
    time.sleep(0.3)
    assert containers(loaded) != []                        # debris: its lock is free now
    assert pirun(["images"], loaded).returncode == 0
    assert containers(loaded) == []


def test_prune_removes_unnamed_images_and_unused_layers(loaded, test_layout):
    r = pirun(["rmi", "test:1"], loaded)
    assert r.returncode == 0
    assert pirun(["load", "-i", test_layout], loaded).returncode == 0
    # make it dangling: drop its name in the record (as a name moved to another image would)
    recs = records(loaded)
    recs[0]["names"] = []
    (loaded / "images.json").write_text(json.dumps({"images": recs}))
    os.makedirs(loaded / "layers" / ".tmp-123-abc" / "diff")          # what a killed unpack leaves
    chown_tree(loaded / "layers" / ".tmp-123-abc")
    r = pirun(["image", "prune"], loaded)
    assert r.returncode == 0 and r.stdout.strip() == recs[0]["id"]
    assert records(loaded) == [] and os.listdir(loaded / "layers") == []


def test_system_df(loaded):
    p = start(loaded, ["-u", "0", "test:1", "sh", "-c", "dd if=/dev/zero of=/big bs=1k count=512 2>/dev/null; "
                                                         "echo ready; sleep 30"])
    try:
        assert p.stdout.readline() == "ready\n"
        r = pirun(["system", "df"], loaded)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
        assert rows["Images"][1:3] == ["1", "1"]
        assert rows["Containers"][1:3] == ["1", "1"]
        size = rows["Containers"][3]
        assert size.endswith("kB") and 500 <= float(size[:-2]) <= 600, size
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
