"""runtime/hostconfig.py: /etc/pirun/pirun.conf (or $PIRUN_CONFIG) parsing, errors naming file, line and key,
immutability, the default rootfs and how to build a missing one, and its import cost (hot path)."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO, user_kwargs
from runtime import hostconfig
from runtime.errors import SpecError


def write(tmp_path, text, name="pirun.conf"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_full_file(tmp_path):
    path = write(tmp_path, """\
# written by the pirun_runtime role
rootfs = /opt/pirun/rootfs_arm
   cgroup_base=/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/pirun.slice   # per user
net = "pasta"

pids_limit = 2048 # default limit
""")
    cfg = hostconfig.load(path)
    assert cfg == hostconfig.HostConfig(
        path=path, rootfs="/opt/pirun/rootfs_arm",
        cgroup_base="/sys/fs/cgroup/user.slice/user-{uid}.slice/user@{uid}.service/pirun.slice",
        net="pasta", pids_limit=2048)
    assert hostconfig.expand_cgroup_base(cfg.cgroup_base, 7, "al") == \
        "/sys/fs/cgroup/user.slice/user-7.slice/user@7.service/pirun.slice"


def test_empty_and_comment_only_files_mean_defaults(tmp_path):
    for text in ("", "# nothing\n\n   # at all\n"):
        cfg = hostconfig.load(write(tmp_path, text))
        assert (cfg.rootfs, cfg.cgroup_base, cfg.net, cfg.pids_limit) == (None, None, None, None)


def test_values():
    # pids_limit: absent -> None (the cgroup manager's default), 0 and max -> 0 (no default limit)
    assert hostconfig.parse("").pids_limit is None
    assert hostconfig.parse("pids_limit = max\n").pids_limit == 0
    assert hostconfig.parse("pids_limit = 0\n").pids_limit == 0
    assert hostconfig.parse("pids_limit = 4194304\n").pids_limit == 4194304
    assert hostconfig.parse("rootfs = '/srv/my rootfs/'\n").rootfs == "/srv/my rootfs"
    assert hostconfig.parse("cgroup_base = /sys/fs/cgroup/pirun/\n").cgroup_base == "/sys/fs/cgroup/pirun"
    assert hostconfig.parse("cgroup_base = /sys/fs/cgroup/{user}/u{uid}\n").cgroup_base == \
        "/sys/fs/cgroup/{user}/u{uid}"
    for mode in ("slirp4netns", "pasta", "none", "host"):
        assert hostconfig.parse(f"net = {mode}\n").net == mode


def test_result_is_immutable():
    cfg = hostconfig.parse("net = none\n")
    with pytest.raises(AttributeError):
        cfg.net = "host"
    with pytest.raises(AttributeError):
        cfg.other = 1
    with pytest.raises(AttributeError):
        del cfg.net
    assert not hasattr(cfg, "__dict__")


@pytest.mark.parametrize("text, line, key, reason", [
    ("net = none\nfoo = 1\n", 2, "foo", "unknown key"),
    ("rootfs = relative/path\n", 1, "rootfs", "is not an absolute path"),
    ("\n\ncgroup_base = /tmp/x\n", 3, "cgroup_base", "not a directory under /sys/fs/cgroup"),
    ("cgroup_base = /sys/fs/cgroup/../../etc\n", 1, "cgroup_base", "not a directory under /sys/fs/cgroup"),
    ("net = slirp\n", 1, "net", "is not one of slirp4netns, pasta, none, host"),
    ("cgroup_base = /sys/fs/cgroup/{gid}\n", 1, "cgroup_base", "only {uid} and {user} may be substituted"),
    ("pids_limit = -5\n", 1, "pids_limit", "is not a number of processes"),
    ("pids_limit = 1e3\n", 1, "pids_limit", "is not a number of processes"),
    ("pids_limit = \u00b2\n", 1, "pids_limit", "is not a number of processes"),
    ("pids_limit = unlimited\n", 1, "pids_limit", "is not a number of processes (0 to 4194304) or max"),
    ("pids_limit = 99999999\n", 1, "pids_limit", "(0 to 4194304)"),
    ("net = none\nnet = host\n", 2, "net", "set twice"),
    ("rootfs =\n", 1, "rootfs", "empty value"),
    ("rootfs = \"/x\n", 1, "rootfs", "bad quoting"),
    ("rootfs = \"/x\" trailing\n", 1, "rootfs", "bad quoting"),
])
def test_errors_name_file_line_and_key(tmp_path, text, line, key, reason):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as e:
        hostconfig.load(path)
    msg = e.value.line()
    assert msg.startswith(f"host config {path} line {line} key {key}: "), msg
    assert reason in msg
    assert f"; fix: " in msg and path in e.value.fix
    assert e.value.exit_code == 125


def test_line_without_equals(tmp_path):
    path = write(tmp_path, "# ok\nrootfs /x\n")
    with pytest.raises(SpecError) as e:
        hostconfig.load(path)
    assert e.value.message.startswith(f"host config {path} line 2: expected `key = value`")


def test_env_variable_selects_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "net = host\n")
    monkeypatch.setenv("PIRUN_CONFIG", path)
    assert hostconfig.load().net == "host"
    assert hostconfig.load().path == path


def test_missing_env_file_is_an_error_but_missing_default_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("PIRUN_CONFIG", str(tmp_path / "nope.conf"))
    with pytest.raises(SpecError) as e:
        hostconfig.load()
    assert "nope.conf: no such file" in e.value.message and "unset PIRUN_CONFIG" in e.value.fix
    monkeypatch.delenv("PIRUN_CONFIG")
    monkeypatch.setattr(hostconfig, "DEFAULT_CONFIG", str(tmp_path / "absent.conf"))
    assert hostconfig.load() == hostconfig.HostConfig()


@pytest.fixture
def shared_tmp():
    """A scratch directory the test user can enter (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="pirun-test-hostconfig-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def test_unreadable_file_as_the_container_user(shared_tmp):
    """As the test user, a config only its owner can read is an error with the chmod fix, not a traceback."""
    path = shared_tmp / "secret.conf"
    path.write_text("net = none\n")
    path.chmod(0o600)
    if os.getuid() != 0:
        path.chmod(0o000)
    code = ("import sys; from runtime import hostconfig\n"
            "try: hostconfig.load(sys.argv[1])\n"
            "except Exception as e: print(type(e).__name__, e.line())\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, **user_kwargs())
    assert r.stdout == f"SpecError host config {path}: Permission denied; fix: chmod 0644 {path} " \
                       "(the pirun_runtime role writes it world-readable)\n", r.stderr


def test_default_rootfs():
    repo = "/opt/pirun"
    expected = "rootfs_arm" if os.uname().machine == "aarch64" else "rootfs_host"
    assert hostconfig.default_rootfs(repo, hostconfig.HostConfig()) == f"/opt/pirun/{expected}"
    assert hostconfig.default_rootfs(repo, None) == f"/opt/pirun/{expected}"
    cfg = hostconfig.parse("rootfs = /srv/pi\n")
    assert hostconfig.default_rootfs(repo, cfg) == "/srv/pi"


def test_build_command_for_a_missing_rootfs(tmp_path):
    arm = "aarch64" if os.uname().machine != "aarch64" else "host"
    assert hostconfig.rootfs_build_command("/r", "/r/rootfs_arm") == \
        f"cd /r && python3 -m runtime.rootfs --arch {arm} --dest /r/rootfs_arm"
    assert hostconfig.rootfs_build_command("/r", "/r/rootfs_host") == \
        "cd /r && python3 -m runtime.rootfs --arch host --dest /r/rootfs_host"
    with pytest.raises(SpecError) as e:
        hostconfig.require_rootfs(str(REPO), str(tmp_path / "rootfs_arm"))
    assert e.value.message == f"rootfs {tmp_path}/rootfs_arm: no such directory"
    assert e.value.fix == f"build it: cd {REPO} && python3 -m runtime.rootfs --arch {arm} --dest " \
                          f"{tmp_path}/rootfs_arm"
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError) as e:
        hostconfig.require_rootfs(str(REPO), str(tmp_path / "empty"))
    assert "not a root filesystem (no /bin)" in e.value.message
    hostconfig.require_rootfs(str(REPO), str(REPO / "rootfs_host"))


def test_the_build_command_really_builds(tmp_path):
    """The fix text is a command that works (as printed, through a shell)."""
    dest = tmp_path / "rootfs_host"
    cmd = hostconfig.rootfs_build_command(str(REPO), str(dest))
    r = subprocess.run(["sh", "-c", cmd.replace("python3", sys.executable, 1)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    hostconfig.require_rootfs(str(REPO), str(dest))


def test_import_stays_cheap():
    """Hot path: no dataclasses, tomllib, re, typing, enum, subprocess... (docs/ARCHITECTURE.md)."""
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
            "import runtime.hostconfig; print(' '.join(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.split())
    banned = {"dataclasses", "tomllib", "re", "typing", "enum", "subprocess", "argparse", "json", "socket",
              "signal", "inspect"}
    assert not loaded & banned, loaded & banned
    assert loaded <= {"runtime", "runtime.hostconfig", "runtime.errors", "runtime.net", "runtime.spec"}, loaded


def test_cgroup_base_placeholders_default_to_this_user():
    import pwd
    uid = os.getuid()
    assert hostconfig.expand_cgroup_base("/sys/fs/cgroup/u-{uid}/{user}/") == \
        f"/sys/fs/cgroup/u-{uid}/{pwd.getpwuid(uid).pw_name}"
    assert hostconfig.expand_cgroup_base("/sys/fs/cgroup/{user}", 3999999999) == "/sys/fs/cgroup/3999999999"
    assert hostconfig.expand_cgroup_base("/sys/fs/cgroup/") == "/sys/fs/cgroup"
