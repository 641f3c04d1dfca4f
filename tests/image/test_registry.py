"""pirun pull from Debian's docker-registry on 127.0.0.1: plain HTTP, TLS with htpasswd; bad input is one
line, exit 125, nothing stored."""
import json
import shutil
import subprocess
import threading

from image_helpers import (PIRUN, Registry, _user_dir, free_port, image_dir, layer, member, one_error_line,  # noqa: F401
                           pirun, registry, root, test_layout, tls_registry)

RUN = ["run", "--pull=never", "--net", "none"]


def records(root):
    p = root / "images.json"
    return json.loads(p.read_text())["images"] if p.exists() else []


def layer_dirs(root):
    return sorted(p.name for p in (root / "layers").iterdir() if len(p.name) == 64) if (root / "layers").exists() \
        else []


def test_pull_plain_http_and_run(root, registry):
    r = pirun(["pull", "--tls-verify=false", f"{registry.host}/test:1"], root)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) == 64
    r = pirun(RUN + [f"{registry.host}/test:1"], root)
    assert r.returncode == 0 and r.stdout == "hello from /home/app as 1000:1000\n", r.stderr
    assert f"{registry.host}/test" in pirun(["images"], root).stdout


def test_pull_tls_with_htpasswd(root, tls_registry):
    r = pirun(["pull", "--cert-dir", tls_registry.certs, "--creds", "lab:secret", f"{tls_registry.host}/test:1"],
              root)
    assert r.returncode == 0, r.stderr
    assert pirun(RUN + [f"{tls_registry.host}/test:1", "cat", "/etc/top"], root).stdout == "top layer\n"


def test_auth_refused(root, tls_registry):
    for creds in (["--creds", "lab:wrong"], []):
        line = one_error_line(pirun(["pull", "--cert-dir", tls_registry.certs] + creds +
                                    [f"{tls_registry.host}/test:1"], root))
        assert "authentication refused" in line and "fix:" in line
    assert records(root) == [] and layer_dirs(root) == []


def test_untrusted_certificate(root, tls_registry):
    line = one_error_line(pirun(["pull", "--creds", "lab:secret", f"{tls_registry.host}/test:1"], root))
    assert "certificate" in line and "--cert-dir" in line


def test_unknown_tag_and_image(root, registry):
    for name in ("test:nosuch", "nosuch:1"):
        line = one_error_line(pirun(["pull", "--tls-verify=false", f"{registry.host}/{name}"], root))
        assert "no such image or tag" in line, line
    assert records(root) == [] and layer_dirs(root) == []


def test_registry_down(root):
    line = one_error_line(pirun(["pull", "--tls-verify=false", f"127.0.0.1:{free_port()}/test:1"], root))
    assert "registry unreachable" in line and "fix:" in line
    assert records(root) == []


def test_corrupted_blob(root, test_layout):
    base = _user_dir("pirun-registry-bad-")
    reg = Registry(base)
    try:
        reg.push(f"oci:{test_layout}:test:1", "bad:1")
        blob = reg.blobs()[-1]                       # the biggest: the base layer
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        line = one_error_line(pirun(["pull", "--tls-verify=false", f"{reg.host}/bad:1"], root))
        assert "digest" in line, line
        assert records(root) == [] and layer_dirs(root) == []
        assert list((root / "tmp").iterdir()) == []
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_two_pulls_at_once(root, registry):
    results = []

    def one():
        results.append(pirun(["pull", "--tls-verify=false", f"{registry.host}/test:1"], root))
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout
    assert len(records(root)) == 1 and len(layer_dirs(root)) == 3
    assert not [p for p in (root / "layers").iterdir() if p.name.startswith(".tmp")]


def test_second_image_pulls_only_new_layers(root, test_layout, shared_tmp):
    """An image sharing layers with one in the store downloads and stores only the others: after the first
    pull the shared base layer is corrupted in the registry, and the second pull still succeeds."""
    import image_helpers as h
    from conftest import ROOTFS
    layout = shared_tmp / "child"
    shutil.copytree(test_layout, layout)
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((layout / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_text())
    extra = layer([member("etc/child", data=b"child\n")])
    layers_raw = []  # rebuild: same first three layers (same blobs), one more
    for desc in manifest["layers"]:
        import gzip
        layers_raw.append(gzip.decompress((layout / "blobs" / "sha256" / desc["digest"][7:]).read_bytes()))
    desc, _ = h.add_image(layout, layers_raw + [extra], config["config"])
    h.write_index(layout, [desc], "child:1")
    h.chown_tree(shared_tmp)
    base = _user_dir("pirun-registry-share-")
    registry = Registry(base)
    try:
        _pull_child(root, registry, test_layout, layout)
    finally:
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


def _pull_child(root, registry, test_layout, layout):
    registry.push(f"oci:{test_layout}:test:1", "test:1")
    registry.push(f"oci:{layout}:child:1", "child:1")
    assert pirun(["pull", "--tls-verify=false", f"{registry.host}/test:1"], root).returncode == 0
    before = layer_dirs(root)
    blob = registry.blobs()[-1]                      # the shared base layer: a download would now fail
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = pirun(["pull", "--tls-verify=false", f"{registry.host}/child:1"], root)
    assert r.returncode == 0, r.stderr
    after = layer_dirs(root)
    assert len(after) == len(before) + 1 and set(before) < set(after)
    assert pirun(RUN + [f"{registry.host}/child:1", "cat", "/etc/child", "/etc/top"], root).stdout == \
        "child\ntop layer\n"


def test_kill_9_during_pull(root, registry):
    """pirun killed during a pull takes skopeo and its unpackers with it; nothing is listed; the next pull
    works and a prune leaves no debris."""
    import os
    import signal
    import time
    from conftest import user_env, user_kwargs
    for delay in (0.1, 0.3, 0.6):
        p = subprocess.Popen([str(PIRUN), "--root", str(root), "pull", "--tls-verify=false",
                              f"{registry.host}/test:1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=user_env(), cwd="/", **user_kwargs())
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        deadline = time.monotonic() + 5
        while _procs(str(root)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _procs(str(root)) == []
        listed = pirun(["images", "-q"], root).stdout.split()
        if listed:
            assert pirun(RUN + [f"{registry.host}/test:1", "cat", "/etc/top"], root).stdout == "top layer\n"
            assert pirun(["rmi", f"{registry.host}/test:1"], root).returncode == 0
    assert pirun(["image", "prune"], root).returncode == 0
    assert os.listdir(root / "tmp") == [] and layer_dirs(root) == []
    assert pirun(["pull", "--tls-verify=false", f"{registry.host}/test:1"], root).returncode == 0
    assert len(layer_dirs(root)) == 3


def _procs(text):
    import os
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
