"""Image references, platforms and the choice in an index; the overlay step in the plan; image configs."""
import pytest

from runtime import steps as S
from runtime.errors import SpecError
from runtime.image import config, ref
from runtime.image.transport import TransportError, choose
from runtime.net import backend_for
from runtime.spec import NetSpec, Overlay, RunOptions, Spec


@pytest.mark.parametrize("text, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("lab/app:2", "docker.io/lab/app:2"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    ("localhost/x:1", "localhost/x:1"),
    ("reg.example/a/b:v1.2", "reg.example/a/b:v1.2"),
    ("a@sha256:" + "0" * 64, "docker.io/library/a@sha256:" + "0" * 64),
])
def test_reference_normalisation(text, want):
    assert str(ref.parse(text)) == want


@pytest.mark.parametrize("text", ["", "UPPER", "a:", "a@sha256:12", "a b", "a//b", "-a"])
def test_bad_reference(text):
    with pytest.raises(SpecError):
        ref.parse(text)


def test_loaded_images_default_to_localhost():
    assert str(ref.parse("pm:1", ref.LOCAL_DOMAIN)) == "localhost/pm:1"


INDEX = {"manifests": [
    {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
    {"digest": "sha256:c", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
]}


@pytest.mark.parametrize("platform, digest", [("linux/amd64", "sha256:a"), ("linux/arm64", "sha256:b"),
                                              ("linux/arm64/v8", "sha256:b"), ("linux/arm/v7", "sha256:c")])
def test_choose_platform(platform, digest):
    assert choose(INDEX, ref.parse_platform(platform), "img")["digest"] == digest


def test_missing_platform_names_those_present():
    with pytest.raises(TransportError) as e:
        choose(INDEX, ref.parse_platform("linux/s390x"), "img")
    assert "img has no image for linux/s390x (it has: linux/amd64, linux/arm64/v8, linux/arm/v7)" in e.value.line()


def test_arm64_without_variant_is_v8():
    idx = {"manifests": [{"digest": "sha256:x", "platform": {"os": "linux", "architecture": "arm64"}}]}
    assert choose(idx, ref.parse_platform("linux/arm64/v8"), "img")["digest"] == "sha256:x"


@pytest.mark.parametrize("text", ["linux", "linux/", "a/b/c/d", "linux/am d64"])
def test_bad_platform(text):
    with pytest.raises(SpecError):
        ref.parse_platform(text)


def base_spec(**kw):
    fields = dict(argv=(), rootfs="/r", caps=(), net=NetSpec(mode="none"),
                  env=(("PATH", "/bin"), ("HOME", "/root"), ("X", "cli")))
    fields.update(kw)
    return Spec(**fields)


CFG = {"config": {"Env": ["PATH=/img/bin", "X=image", "Y=image"], "Entrypoint": ["/e"], "Cmd": ["c1"],
                  "WorkingDir": "/w", "User": "7:8", "StopSignal": "SIGINT"}}


def test_config_applied_as_podman_does():
    spec, stop = config.apply(base_spec(), RunOptions(image="i"), CFG, [])
    assert spec.argv == ("/e", "c1") and spec.workdir == "/w" and spec.user == (7, 8) and stop == "SIGINT"
    assert dict(spec.env) == {"PATH": "/img/bin", "HOME": "/root", "X": "image", "Y": "image"}


def test_user_options_override_the_config():
    opts = RunOptions(image="i", explicit=frozenset({"entrypoint", "workdir", "user", "env"}),
                      entrypoint='["/x", "-y"]', user="0", env_names=frozenset({"X"}))
    spec, _ = config.apply(base_spec(argv=("arg",), workdir="/cli"), opts, CFG, [])
    assert spec.argv == ("/x", "-y", "arg") and spec.workdir == "/cli" and spec.user is None
    assert dict(spec.env)["X"] == "cli"


def test_no_command_at_all():
    with pytest.raises(SpecError):
        config.apply(base_spec(), RunOptions(image="i"), {"config": {}}, [])


def test_user_names_from_the_image(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\nstaff:x:50:\n")
    assert config.resolve_user("app", [str(tmp_path)]) == (1000, 1001, "/home/app")
    assert config.resolve_user("app:staff", [str(tmp_path)]) == (1000, 50, "/home/app")
    assert config.resolve_user("1000", [str(tmp_path)]) == (1000, 1001, "/home/app")
    assert config.resolve_user("42:43", [str(tmp_path)]) == (42, 43, None)
    with pytest.raises(SpecError):
        config.resolve_user("nobody", [str(tmp_path)])


def test_overlay_is_mounted_before_the_rootfs_is_bound():
    ov = Overlay(lowers=("/l2", "/l1"), upper="/u", work="/w")
    plan = S.plan(base_spec(overlay=ov), backend_for(NetSpec(mode="none")))
    kinds = [type(s).__name__ for s in plan]
    assert kinds[:3] == ["MakeRslave", "MountOverlay", "BindRootfs"]
    assert plan[1].overlay == ov and plan[1].target == "/r"
    assert not any(isinstance(s, S.MountOverlay) for s in S.plan(base_spec(), backend_for(NetSpec(mode="none"))))
