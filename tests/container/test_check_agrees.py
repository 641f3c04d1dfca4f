"""`run.py --check` and a real run agree: "check says ok" means "run works", on hosts faked for both alike.

Each fake host is a private mount namespace made by root (pytest), with files bind-mounted over the real ones
(/etc/subuid, /usr/bin/newuidmap) or a PATH with other programs first; inside it, as the unprivileged test user,
`run.py --check` and a real container run see the same host. The check's verdict and what the run did (the ID
map inside, its warning, the network helper it executed) must match, down to the words of the warning.
"""
import os
import shlex
import shutil
import stat
import subprocess

import pytest

from conftest import RUN, container_user, missing, user_env
from test_check import Report

NOT_SETUID = "neither setuid root nor has cap_setuid"


def in_fake_host(argv, binds=(), path=None, config=None, timeout=120):
    """Run argv as the test user in a private mount namespace with `binds` [(source, target)] mounted."""
    if os.getuid() != 0:
        missing("root for pytest (a fake host is a private mount namespace)", "run the tests as root: scripts/test")
    for tool in ("unshare", "setpriv", "mount"):
        if not shutil.which(tool):
            missing(tool, "apt-get install util-linux mount")
    _name, uid, gid, _home = container_user()
    mounts = "".join(f"mount --bind {shlex.quote(str(s))} {shlex.quote(str(t))} && " for s, t in binds)
    script = f'{mounts}exec setpriv --reuid={uid} --regid={gid} --clear-groups -- "$@"'
    env = {"PIRUN_CONFIG": str(config)} if config else {}
    if path:
        env["PATH"] = path
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                           *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=user_env(env),
                          cwd="/")


def check_report(rootfs, **kw):
    r = in_fake_host([RUN, "--check", "--rootfs", rootfs], **kw)
    assert "Traceback" not in r.stderr, r.stderr
    return Report(r)


def run_uid_map(rootfs, net="none", **kw):
    """(lines of the container's uid_map, run.py's stderr) of a real run in the fake host."""
    r = in_fake_host([RUN, "--net", net, "--rootfs", rootfs, "cat", "/proc/self/uid_map"], **kw)
    assert r.returncode == 0, r.stderr
    return [" ".join(line.split()) for line in r.stdout.splitlines()], r.stderr


def assert_agree(rep, uid_map, stderr):
    """idmap ok <=> the run mapped the subordinate range without a warning; else the same warning, word for word."""
    _name, uid, _gid, _home = container_user()
    if rep.status("idmap") == "ok":
        assert len(uid_map) == 2 and uid_map[0] == f"0 {uid} 1", uid_map
        assert f"uid_map {' / '.join(uid_map)}" in rep.text("idmap")
        assert stderr == "", stderr
        return
    assert rep.status("idmap") == "missing" and "idmap" in rep.required_missing()
    assert uid_map == [f"0 {uid} 1"], "check said the mapping fails, but the run mapped the range"
    warning = stderr.strip()
    assert warning.startswith("run.py: warning: ") or ": only your own user is mapped" in warning, warning
    what = warning.split("warning: ", 1)[-1].split("; fix: ")[0]
    assert rep.text("idmap").startswith(f"run.py would map only the user: {what}"), (rep.text("idmap"), warning)


@pytest.fixture
def fake(shared_tmp):
    config = shared_tmp / "pirun.conf"
    config.write_text("net = none\n")
    config.chmod(0o644)
    return shared_tmp, config


def test_real_host(fake, rootfs):
    _d, config = fake
    rep = check_report(rootfs, config=config)
    uid_map, err = run_uid_map(rootfs, config=config)
    assert rep.status("idmap") == "ok", rep.text("idmap")      # this test host is set up for full mapping
    assert_agree(rep, uid_map, err)


def test_subuid_file_without_the_user(fake, rootfs):
    d, config = fake
    name, uid, _gid, _home = container_user()
    with open("/etc/subuid") as f:
        others = [line for line in f if line.split(":")[0] not in (name, str(uid))]
    subuid = d / "subuid"
    subuid.write_text("".join(others))
    subuid.chmod(0o644)
    binds = [(subuid, "/etc/subuid")]
    rep = check_report(rootfs, binds=binds, config=config)
    assert rep.status("subuid") == "missing" and f"no /etc/subuid range for {name}" in rep.text("subuid")
    assert rep.status("subgid") == "ok"
    uid_map, err = run_uid_map(rootfs, binds=binds, config=config)
    assert_agree(rep, uid_map, err)
    assert f"no /etc/subuid range for {name}" in err
    assert rep.text("idmap").endswith("fix: see the subuid line")


def test_newuidmap_without_setuid_bit(fake, rootfs):
    d, config = fake
    real = shutil.which("newuidmap", path="/usr/bin:/bin")
    if not real or not os.stat(real).st_mode & stat.S_ISUID:
        missing("a setuid newuidmap in /usr/bin", "apt-get install uidmap")
    plain = d / "newuidmap"
    shutil.copy(real, plain)                     # same program, owned by root, mode 0755: no setuid bit
    os.chown(plain, 0, 0)
    plain.chmod(0o755)
    binds = [(plain, real)]
    rep = check_report(rootfs, binds=binds, config=config)
    assert rep.status("newuidmap") == "missing" and NOT_SETUID in rep.text("newuidmap")
    assert rep.text("newuidmap").startswith(real)
    uid_map, err = run_uid_map(rootfs, binds=binds, config=config)
    assert_agree(rep, uid_map, err)
    assert "newuidmap" in rep.text("idmap") and rep.text("idmap").endswith("fix: see the newuidmap line")


def fake_tool(d, name, log, then=None):
    p = d / name
    p.write_text(f"#!/bin/sh\necho \"$0 $*\" >> {log}\n" + (f'exec {then} "$@"\n' if then else "exit 1\n"))
    p.chmod(0o755)
    return str(p)


def test_path_with_other_tools_first(fake, rootfs):
    """newuidmap never comes from $PATH (check and run both use /usr/bin's); slirp4netns does, and check names
    exactly the one the run executes."""
    d, config = fake
    bindir = d / "bin"
    bindir.mkdir()
    log = d / "executed.log"
    log.write_text("")
    _name, uid, gid, _home = container_user()
    os.chown(log, uid, gid)
    for tool in ("newuidmap", "newgidmap"):
        fake_tool(bindir, tool, log)
    real_slirp = shutil.which("slirp4netns", path="/usr/bin:/bin")
    if not real_slirp:
        missing("slirp4netns", "apt-get install slirp4netns")
    fake_slirp = fake_tool(bindir, "slirp4netns", log, then=real_slirp)
    path = f"{bindir}:/usr/local/bin:/usr/bin:/bin"
    rep = check_report(rootfs, path=path, config=config)
    assert rep.status("newuidmap") == "ok" and rep.text("newuidmap").startswith("/usr/bin/newuidmap, ")
    assert rep.status("slirp4netns") == "ok" and rep.text("slirp4netns").startswith(f"{fake_slirp}: ")
    log.write_text("")
    uid_map, err = run_uid_map(rootfs, net="slirp4netns", path=path, config=config)
    assert_agree(rep, uid_map, err)
    executed = log.read_text().splitlines()
    assert executed and all(line.startswith(f"{fake_slirp} ") for line in executed), executed
    assert not [line for line in executed if "newuidmap" in line or "newgidmap" in line]
