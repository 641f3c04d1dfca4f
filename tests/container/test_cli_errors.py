"""Bad input: one line `run.py: error: ...` with a fix where there is one, exit 125, nothing started."""
import pytest

from conftest import RUN, REPO, run


@pytest.mark.parametrize("args, text", [
    (["--bogus", "true"], "unknown option --bogus"),
    (["--net", "foo", "true"], "--net foo: unknown network mode"),
    (["--memory", "1x", "true"], "--memory"),
    (["--pids", "-3", "true"], "--pids"),
    (["--cpus", "abc", "true"], "--cpus"),
    (["-p", "80", "true"], "expected [HOST_IP:]HOST_PORT:CONTAINER_PORT"),
    (["-p", "1.2.3:80:80", "true"], "is not an IP address"),
    (["-p", "127.0.0.1:0:80", "true"], "out of range"),
    (["--cap-add", "FLY", "true"], "unknown capability"),
    (["--hostname", "-bad", "true"], "not a valid hostname"),
    (["-v", "/no/such/host:/mnt", "true"], "No such file or directory"),
    (["-v", "/tmp:relative", "true"], "must be absolute"),
    (["-w", "relative", "true"], "must be an absolute path"),
    (["--security-opt", "apparmor=x", "true"], "unsupported"),
    (["--hostname"], "needs a value"),
    (["--rootfs", "/no/such/rootfs", "true"], "rootfs /no/such/rootfs"),
])
def test_bad_option(rootfs, args, text):
    r = run(args, raw_argv=True)
    assert r.returncode == 125, r.stderr
    assert r.stderr.startswith("run.py: error: ")
    assert text in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == ""


def test_missing_rootfs_says_how_to_build_it():
    r = run(["--rootfs", "/tmp/no-such-rootfs", "true"], raw_argv=True)
    assert r.returncode == 125
    assert "python3 -m runtime.rootfs" in r.stderr


def test_real_root_is_refused_without_intent(rootfs):
    import os
    import subprocess
    if os.getuid() != 0:
        pytest.fail("this test needs pytest to run as root (CI does)", pytrace=False)
    r = subprocess.run([str(RUN), "--net", "none", "--rootfs", str(rootfs), "true"], capture_output=True,
                       text=True, cwd=REPO)
    assert r.returncode == 125
    assert "refusing to run as root" in r.stderr and "--allow-root" in r.stderr


def test_help_and_version():
    r = run(["--help"], raw_argv=True)
    assert r.returncode == 0 and "usage: run.py" in r.stdout and "--net" in r.stdout
    r = run(["--version"], raw_argv=True)
    assert r.returncode == 0 and r.stdout.startswith("run.py (pirun)")
