"""Multi-platform images: the host's platform from an index, --platform for another (arm64 runs here through
qemu-user), a missing platform is one line naming the platforms the image has."""
import pytest

from conftest import ROOTFS, ROOTFS_ARM, check_rootfs
from image_helpers import (_user_dir, add_image, chown_tree, nested_index, one_error_line, pirun, registry,  # noqa: F401
                           root, test_layout, image_dir, tree_layer)

RUN = ["run", "--pull=never", "--net", "none"]


@pytest.fixture(scope="module")
def multi_layout():
    check_rootfs(ROOTFS, "the host-architecture test rootfs")
    check_rootfs(ROOTFS_ARM, "the arm64 rootfs")
    base = _user_dir("pirun-multi-")
    path = base / "multi"
    path.mkdir()
    amd, _ = add_image(path, [tree_layer(ROOTFS)], {"Cmd": ["uname", "-m"]}, arch="amd64")
    arm, _ = add_image(path, [tree_layer(ROOTFS_ARM)], {"Cmd": ["uname", "-m"]}, arch="arm64", variant="v8")
    nested_index(path, [amd, arm], "multi:1")
    chown_tree(base)
    yield path
    import shutil
    shutil.rmtree(base, ignore_errors=True)


def test_host_platform_is_chosen(root, multi_layout):
    assert pirun(["load", "-i", multi_layout], root).returncode == 0
    r = pirun(RUN + ["multi:1"], root)
    assert r.returncode == 0 and r.stdout == "x86_64\n", r.stderr
    assert '"Architecture": "amd64"' in pirun(["image", "inspect", "multi:1"], root).stdout


def test_platform_option_runs_arm64(root, multi_layout):
    assert pirun(["load", "--platform", "linux/arm64", "-i", multi_layout], root).returncode == 0
    r = pirun(RUN + ["multi:1"], root)
    assert r.returncode == 0 and r.stdout == "aarch64\n", r.stderr


def test_missing_platform_names_those_present(root, multi_layout):
    line = one_error_line(pirun(["load", "--platform", "linux/s390x", "-i", multi_layout], root))
    assert "no image for linux/s390x (it has: linux/amd64, linux/arm64/v8)" in line
    assert "--platform" in line
    assert not (root / "images.json").exists() or '"id"' not in (root / "images.json").read_text()


def test_pull_multi_platform_from_a_registry(root, registry, multi_layout):
    registry.push(f"oci:{multi_layout}:multi:1", "multi:1", all_platforms=True)
    ref = f"{registry.host}/multi:1"
    r = pirun(["pull", "--tls-verify=false", "--platform", "linux/arm64/v8", ref], root)
    assert r.returncode == 0, r.stderr
    assert pirun(RUN + [ref], root).stdout == "aarch64\n"
    line = one_error_line(pirun(RUN + ["--platform", "linux/amd64", ref], root))
    assert "is not in the store for linux/amd64" in line
    line = one_error_line(pirun(["pull", "--tls-verify=false", "--platform", "linux/riscv64", ref], root))
    assert "no image for linux/riscv64 (it has: linux/amd64, linux/arm64/v8)" in line
