"""`run.py --check` as the unprivileged test user, against the real state of the host the tests run on.

Each item's verdict is compared with an independent probe run as the same user (unshare, open, findmnt, the
files in /etc and /proc), and the exit status with the rule "0 only when every required item is ok".
Whatever the host: cgroup lines are `missing (optional)` where no cgroup v2 limits can be had, and required once
the config sets `pids_limit`; with `net = none` neither the network helper nor /dev/net/tun is required.
That check and a real run agree on faked hosts is tests/container/test_check_agrees.py.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

from conftest import REPO, container_user, missing, run, user_env, user_kwargs
from runtime import hostconfig

LINE = re.compile(r"^(ok|missing|warn) {2,}(\S.*?) {2,}(\S.*)$")


@pytest.fixture(scope="module")
def shared_dir():
    """Config files the test user can read (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="pirun-test-check-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


class Report:
    def __init__(self, r):
        self.r = r
        self.code = r.returncode
        lines = r.stdout.splitlines()
        assert lines and lines[-1].startswith("check: "), r.stdout + r.stderr
        self.summary = lines[-1]
        self.lines = lines[:-1]
        self.items = {}
        for line in self.lines:
            m = LINE.match(line)
            assert m, f"bad report line: {line!r}"
            self.items[m.group(2)] = (m.group(1), m.group(3))

    def status(self, name):
        assert name in self.items, f"no {name!r} line in:\n{self.r.stdout}"
        return self.items[name][0]

    def text(self, name):
        return self.items[name][1]

    def required_missing(self):
        return [n for n, (s, t) in self.items.items() if s == "missing" and "(optional); fix:" not in t
                and not t.endswith("(optional)")]


def check(shared_dir, *args, config="# defaults\n"):
    conf = shared_dir / f"pirun-{abs(hash((config, args)))}.conf"
    conf.write_text(config)
    conf.chmod(0o644)
    r = run(["--check", *args], raw_argv=True, env={"PIRUN_CONFIG": str(conf)}, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    return Report(r)


def as_user(argv, cwd="/"):
    return subprocess.run(argv, capture_output=True, text=True, env=user_env(), cwd=cwd, timeout=60,
                          **user_kwargs())


@pytest.fixture(scope="module")
def report(shared_dir):
    return check(shared_dir)


def test_format_fixes_and_exit_rule(report):
    assert report.r.stderr == ""
    for name, (status, text) in report.items.items():
        if status == "ok":
            assert "; fix:" not in text, name
            continue
        assert "; fix: " in text, f"{name}: a {status} line needs a fix"
        fix = text.split("; fix: ", 1)[1]
        if name.startswith("cgroup"):       # the cgroup manager's own fix, as run.py prints it
            assert "pirun_cgroup" in fix, f"{name}: {fix}"
            continue
        assert fix.startswith("see the ") or re.match(r"role pirun_(prereqs|cgroup|runtime)\b.*?, or by hand: \S",
                                                      fix) or name == "user", f"{name}: {fix}"
    assert report.code == (1 if report.required_missing() else 0), report.r.stdout
    if report.code:
        assert report.summary.startswith(f"check: {len(report.required_missing())} required item")
    else:
        assert report.summary.startswith("check: every required item is ok")


def test_reports_as_the_invoking_user(report):
    name, uid, gid, _ = container_user()
    assert report.status("user") == "ok"
    assert report.text("user") == f"{name} (uid {uid}, gid {gid})"


def test_user_namespaces(report):
    probe = as_user(["unshare", "--user", "true"])
    if probe.returncode != 0:
        missing(f"unprivileged user namespaces ({probe.stderr.strip()})", "the pirun_prereqs role")
    assert report.status("userns") == "ok"
    assert report.status("user.max_user_namespaces") == "ok"
    for sysctl, good in (("kernel/unprivileged_userns_clone", "1"),
                         ("kernel/apparmor_restrict_unprivileged_userns", "0")):
        name = sysctl.replace("/", ".")
        if os.path.exists(f"/proc/sys/{sysctl}"):
            assert report.status(name) == "ok"
        else:
            assert name not in report.items, "a sysctl this kernel lacks is not reported"


def test_id_mapping(report):
    name, uid, _gid, _ = container_user()
    with open("/etc/subuid") as f:
        ranges = [line.strip().split(":")[1:] for line in f if line.split(":")[0] in (name, str(uid))]
    if not ranges:
        missing(f"an /etc/subuid range for {name}", f"usermod --add-subuids 100000-165535 {name}")
    start, count = ranges[0]
    for tool in ("newuidmap", "newgidmap"):
        assert report.status(tool) == "ok", report.text(tool)
        assert "setuid root" in report.text(tool) or "file capability" in report.text(tool)
    assert report.status("subuid") == "ok"
    assert f"{start}-{int(start) + int(count) - 1} ({count} ids)" in report.text("subuid")
    assert report.status("idmap") == "ok", report.text("idmap")
    assert f"uid_map 0 {uid} 1 / 1 {start} {count}" in report.text("idmap")


def test_network_helpers(report):
    for tool in ("slirp4netns", "pasta"):
        if shutil.which(tool, path="/usr/bin:/bin"):
            assert report.status(tool) == "ok"
        else:
            missing(tool, "the pirun_prereqs role (apt-get install slirp4netns passt)")
    assert re.search(r"slirp4netns version \d", report.text("slirp4netns"))
    assert re.search(r"pasta.*\d", report.text("pasta"))


def test_dev_net_tun_matches_what_the_user_can_open(report):
    probe = as_user([sys.executable, "-c", "import os; os.close(os.open('/dev/net/tun', os.O_RDWR))"])
    status, text = report.status("/dev/net/tun"), report.text("/dev/net/tun")
    if probe.returncode == 0:
        assert status == "ok", text
        assert "a tap device was created in a user+net namespace" in text
    else:
        assert "PermissionError" in probe.stderr or "FileNotFoundError" in probe.stderr, probe.stderr
        assert status == "missing", text
        assert not text.endswith("(optional)") and "(optional);" not in text, "default net needs it"
        assert "chmod 0666 /dev/net/tun" in text or "modprobe tun" in text
        assert report.code == 1 and "/dev/net/tun" in report.summary


def test_ping_group_range_is_only_a_warning(report):
    _name, _uid, gid, _ = container_user()
    with open("/proc/sys/net/ipv4/ping_group_range") as f:
        lo, hi = map(int, f.read().split())
    groups = set(map(int, as_user(["id", "-G"]).stdout.split())) | {gid}
    expected = "ok" if any(lo <= g <= hi for g in groups) else "warn"
    assert report.status("net.ipv4.ping_group_range") == expected
    if expected == "warn":
        assert "sysctl -w net.ipv4.ping_group_range=" in report.text("net.ipv4.ping_group_range")


def cgroup_fstype():
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "/sys/fs/cgroup"], capture_output=True, text=True)
    return r.stdout.split()[-1] if r.stdout.split() else "none"


def test_cgroup_lines_say_what_a_run_with_limits_gets(shared_dir, report):
    """The controllers line is ok exactly when run.py --memory --pids --cpus works, and when it is missing its
    reason is run.py's own error line."""
    conf = shared_dir / "defaults.conf"
    conf.write_text("# defaults\n")
    conf.chmod(0o644)
    r = run(["--memory", "64m", "--pids", "64", "--cpus", "1", "true"], env={"PIRUN_CONFIG": str(conf)})
    status, text = report.status("cgroup controllers"), report.text("cgroup controllers")
    if r.returncode == 0:
        assert status == "ok", text
        assert report.status("cgroup2") == "ok"
        return
    assert r.returncode == 125 and r.stderr.startswith("run.py: error: cgroup "), r.stderr
    assert status in ("missing", "warn"), text
    if status == "missing":
        reason = r.stderr[len("run.py: error: "):].split("; fix: ")[0]
        r2 = run(["--memory", "64m", "--pids", "64", "true"], env={"PIRUN_CONFIG": str(conf)})
        assert r2.returncode == 125, "--memory --pids work here: the line should be a warn"
        assert text.startswith(r2.stderr[len("run.py: error: "):].split("; fix: ")[0]), (text, reason)
        assert text.endswith("(optional); fix: " + r2.stderr.split("; fix: ", 1)[1].strip())
        assert "cgroup controllers" not in report.required_missing()
        assert "optional missing: " in report.summary and "cgroup controllers" in report.summary
    if cgroup_fstype() == "tmpfs" and os.path.ismount("/sys/fs/cgroup/memory"):
        assert report.status("cgroup2") == "missing"
        assert report.text("cgroup2").startswith("hybrid hierarchy: ") and "memory" in report.text("cgroup2")


def test_without_user_mode_network_the_check_passes_despite_cgroups(shared_dir):
    """Limits are optional: with `net = none` only userns, id mapping and the rootfs are required."""
    rep = check(shared_dir, config="net = none\n")
    assert rep.required_missing() == [], f"required prerequisites missing here:\n{rep.r.stdout}"
    assert rep.code == 0, rep.r.stdout
    assert rep.summary.startswith("check: every required item is ok")
    if rep.status("/dev/net/tun") == "missing":
        assert "(optional); fix:" in rep.text("/dev/net/tun"), "no user-mode network, no tun needed"


def test_limits_by_default_make_cgroups_required(shared_dir):
    rep = check(shared_dir, config="net = none\npids_limit = 100\n")
    if rep.status("cgroup controllers") == "ok":
        assert rep.status("cgroup2") == "ok"
        return
    assert "cgroup controllers" in rep.required_missing()
    assert "(required: " in rep.text("cgroup controllers") and "sets pids_limit)" in rep.text("cgroup controllers")
    assert rep.code == 1
    if rep.status("cgroup2") == "missing":
        assert rep.summary.startswith("check: 2 required items missing: cgroup2, cgroup controllers")


def test_default_rootfs(report):
    assert report.status("rootfs") == "ok", report.text("rootfs")
    arch = os.uname().machine
    default = hostconfig.default_rootfs(str(REPO), None)     # no rootfs in the config: the repo's
    assert report.text("rootfs") == f"{default} (busybox, {arch}, native, runs: uname -m = {arch})"


def test_arm_rootfs_runs_here(shared_dir, rootfs_arm):
    rep = check(shared_dir, "--rootfs", str(rootfs_arm), config="net = none\n")
    assert rep.status("rootfs") == "ok", rep.text("rootfs")
    text = rep.text("rootfs")
    assert text.startswith(f"{rootfs_arm} (busybox, aarch64, ") and text.endswith("runs: uname -m = aarch64)")
    if os.uname().machine != "aarch64":
        assert "through binfmt_misc qemu-aarch64 (flags " in text and "F" in text.split("flags ")[1]


def test_missing_rootfs_says_how_to_build_it(shared_dir):
    rep = check(shared_dir, "--rootfs", "/tmp/no-such-rootfs-here", config="net = none\n")
    assert rep.status("rootfs") == "missing"
    assert rep.text("rootfs") == ("/tmp/no-such-rootfs-here: no such directory; fix: role pirun_runtime, or by "
                                  f"hand: cd {REPO} && python3 -m runtime.rootfs --arch host --dest "
                                  "/tmp/no-such-rootfs-here")
    assert rep.code == 1 and rep.summary == "check: 1 required item missing: rootfs " \
        "(" + rep.summary.split(" (", 1)[1]


def test_bad_config_is_a_required_item(shared_dir):
    rep = check(shared_dir, config="net = none\nfoo = bar\n")
    assert rep.status("config") == "missing"
    assert re.match(r"host config \S+pirun-\d+\.conf line 2 key foo: unknown key", rep.text("config"))
    assert rep.code == 1


def test_bad_arguments_are_one_line(shared_dir):
    r = as_user([sys.executable, "-m", "runtime.check", "--bogus"], cwd=str(REPO))
    assert r.returncode == 125
    assert r.stderr.startswith("check: error: --check: unknown option '--bogus'; fix: usage: ")
    assert r.stderr.count("\n") == 1 and r.stdout == ""
