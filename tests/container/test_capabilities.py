"""Capabilities limited to podman's default set, changeable with --cap-add/--cap-drop; no_new_privs set;
the inheritable and ambient sets empty."""
from conftest import run
from runtime import caps


def _status():
    return lambda text: dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _caps(args=()):
    r = run(list(args) + ["cat", "/proc/self/status"])
    assert r.returncode == 0, r.stderr
    st = _status()(r.stdout)
    return {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}, st


def test_default_capabilities_are_podmans():
    c, st = _caps()
    want = caps.mask(caps.DEFAULT)
    assert c["CapEff"] == want
    assert c["CapPrm"] == want
    assert c["CapBnd"] == want
    assert c["CapInh"] == 0
    assert c["CapAmb"] == 0
    assert st["NoNewPrivs"].strip() == "1"


def test_cap_add_and_drop():
    c, _ = _caps(["--cap-add", "NET_RAW", "--cap-drop", "chown", "--cap-drop", "CAP_KILL"])
    want = (caps.mask(caps.DEFAULT) | caps.mask(["NET_RAW"])) & ~caps.mask(["CHOWN", "KILL"])
    assert c["CapEff"] == want and c["CapBnd"] == want


def test_cap_drop_all():
    c, _ = _caps(["--cap-drop", "ALL"])
    assert c["CapEff"] == 0 and c["CapBnd"] == 0


def test_without_cap_chown_chown_fails(rootfs):
    r = run(["--cap-drop", "CHOWN", "/bin/sh", "-c", "touch /dev/shm/f; chown 1:1 /dev/shm/f"])
    assert r.returncode != 0 and "Operation not permitted" in r.stderr


def test_no_new_privs_blocks_mount_and_sysadmin(rootfs):
    r = run(["/bin/sh", "-c", "mount -t tmpfs none /mnt"])
    assert r.returncode != 0
    assert "permission denied" in r.stderr.lower() or "Operation not permitted" in r.stderr
