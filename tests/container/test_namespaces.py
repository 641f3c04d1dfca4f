"""PID 1, hostname, uid 0 with the subuid range mapped, a private process table, the other namespaces."""
import os

from conftest import run, container_user


def test_command_is_pid_1_root_with_hostname_and_subuid_map(rootfs):
    r = run(["/bin/sh", "-c", "echo $$; hostname; id -u; cat /proc/self/uid_map"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "1"
    assert lines[1] == "myhost"
    assert lines[2] == "0"
    maps = [tuple(int(x) for x in line.split()) for line in lines[3:]]
    _name, uid, _gid, _home = container_user()
    assert (0, uid, 1) in maps
    with open("/etc/subuid") as f:
        start, count = next((int(a), int(b)) for n, a, b in (line.strip().split(":") for line in f)
                            if n in (_name, str(uid)))
    assert (1, start, count) in maps, f"subuid range not mapped: {maps}"
    assert r.stderr == ""


def test_ps_shows_only_the_containers_processes(rootfs):
    r = run(["/bin/sh", "-c", "sleep 5 & ps -o pid,comm"])
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    pids = sorted(int(row[0]) for row in rows)
    assert pids[0] == 1
    assert len(rows) <= 4, r.stdout           # sh, sleep, ps (and busybox's own applet process)
    assert all(int(row[0]) < 10 for row in rows), r.stdout


def test_hostname_option(rootfs):
    r = run(["--hostname", "pi-lab-7", "hostname"])
    assert r.stdout.strip() == "pi-lab-7"


def test_namespaces_differ_from_the_host(rootfs):
    r = run(["/bin/sh", "-c", "for n in user mnt pid uts ipc net cgroup; do readlink /proc/1/ns/$n; done"])
    assert r.returncode == 0, r.stderr
    inside = r.stdout.split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup")]
    assert len(inside) == 7
    for i, h in zip(inside, host):
        assert i != h, f"namespace {h} is shared with the host"


def test_chown_to_a_mapped_id_works(rootfs):
    r = run(["/bin/sh", "-c", "touch /dev/shm/f && chown 1000:1000 /dev/shm/f && stat -c %u:%g /dev/shm/f"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1000:1000"


def test_environment_defaults_and_env_option(rootfs):
    r = run(["-e", "FOO=bar", "-e", "EMPTY=", "/bin/sh", "-c", "env | sort"])
    env = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert env["FOO"] == "bar"
    assert env["EMPTY"] == ""
    assert env["HOME"] == "/root"
    assert env["HOSTNAME"] == "myhost"
    assert env["PATH"].startswith("/usr/local/sbin:")
    assert "USER" not in env                  # the host's environment does not leak in


def test_workdir(rootfs):
    assert run(["-w", "/tmp", "pwd"]).stdout.strip() == "/tmp"
    r = run(["-w", "/no/such/dir", "pwd"])
    assert r.returncode == 125
    assert "workdir /no/such/dir" in r.stderr


def test_without_subordinate_ids_a_single_mapping_with_one_warning(rootfs):
    """A user with no /etc/subuid range still gets a container: itself as root, nothing else, one warning line."""
    import pwd
    import subprocess
    import pytest
    from conftest import run_args
    if os.getuid() != 0:
        pytest.fail("this test needs pytest to run as root, to create a user without subordinate IDs (CI does)",
                    pytrace=False)
    name = "pirun-nosubid"
    subprocess.run(["userdel", name], capture_output=True)
    subprocess.run(["useradd", "--no-create-home", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name],
                   check=True)
    try:
        pw = pwd.getpwnam(name)
        r = subprocess.run(run_args(["/bin/sh", "-c", "id -u; cat /proc/self/uid_map /proc/self/gid_map"]),
                           capture_output=True, text=True, cwd="/", timeout=60, user=pw.pw_uid, group=pw.pw_gid,
                           extra_groups=[], env={"PATH": "/usr/bin:/bin", "HOME": "/"})
    finally:
        subprocess.run(["userdel", name], capture_output=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0] == "0"
    assert [tuple(int(x) for x in line.split()) for line in lines[1:3]] == [(0, pw.pw_uid, 1), (0, pw.pw_gid, 1)]
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("run.py: warning: no /etc/subuid range for")
    assert "usermod --add-subuids" in r.stderr
