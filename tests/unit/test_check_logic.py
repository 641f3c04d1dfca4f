"""runtime/check.py logic that needs no privileges: parsing of the kernel's and shadow's files, the report's
format, which items decide the exit status. The real report, as the test user, is tests/container/test_check.py."""
import os
import re
import shutil
import struct

import pytest

from runtime import check
from runtime.check import MISSING, OK, WARN, Item
from runtime.errors import SpecError

LINE = re.compile(r"^(ok|missing|warn) {2,}(\S.*?) {2,}(\S.*)$")

# /proc/self/mounts of this build machine (hybrid: v1 controllers, cgroup2 without controllers, no systemd)
HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot 0 0\n"
LEGACY = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"


def caps_xattr(revision, permitted, effective=True):
    magic = {1: 0x01000000, 2: 0x02000000, 3: 0x03000000}[revision] | (1 if effective else 0)
    if revision == 1:
        return struct.pack("<III", magic, permitted & 0xFFFFFFFF, 0)
    data = struct.pack("<IIIII", magic, permitted & 0xFFFFFFFF, 0, permitted >> 32, 0)
    return data + (struct.pack("<I", 0) if revision == 3 else b"")


def test_file_capabilities():
    setuid = 1 << check.CAP_SETUID
    assert check.parse_file_caps(caps_xattr(2, setuid)) == (setuid, True)
    assert check.parse_file_caps(caps_xattr(3, setuid | (1 << 40))) == (setuid | (1 << 40), True)
    assert check.parse_file_caps(caps_xattr(1, 1 << check.CAP_SETGID, effective=False)) == (64, False)
    assert check.parse_file_caps(b"") is None
    assert check.parse_file_caps(None) is None
    assert check.parse_file_caps(b"\x00\x00\x00\x09" + b"\0" * 16) is None


SUBUID = "alice:100000:65536\npirun:165536:65536\n1005:300000:1000\nbroken line\nbob:x:10\n"


def test_subid_ranges_by_name_or_uid():
    assert check.subid_ranges(SUBUID, "pirun", 1002) == [(165536, 65536)]
    assert check.subid_ranges(SUBUID, "carol", 1005) == [(300000, 1000)]
    assert check.subid_ranges(SUBUID, "bob", 1006) == []
    assert check.subid_ranges(None, "pirun", 1002) == []
    assert check.free_subid_start(SUBUID) == 301000
    assert check.free_subid_start("") == 100000


def test_ping_group_range():
    assert check.ping_range_covers("1\t0", [1002]) == (False, 1, 0)
    assert check.ping_range_covers("0 2147483647", [1002]) == (True, 0, 2147483647)
    assert check.ping_range_covers("1000 1001", [1002, 1000]) == (True, 1000, 1001)
    assert check.ping_range_covers("garbage", [0])[0] is False


def test_cgroup_layouts():
    assert check.cgroup_layout(HYBRID) == ("hybrid", ["cpu", "memory", "pids"], "/sys/fs/cgroup/unified")
    assert check.cgroup_layout(UNIFIED) == ("unified", [], "/sys/fs/cgroup")
    assert check.cgroup_layout(LEGACY) == ("legacy", ["memory"], None)
    assert check.cgroup_layout("proc /proc proc rw 0 0\n") == ("none", [], None)


def test_delegated_base():
    own = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"
    assert check.own_cgroup("1:name=systemd:/\n0::" + own + "\n") == own
    assert check.own_cgroup("4:memory:/x\n") is None
    assert check.delegated_base(own, 1000) == (
        "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service", "own user@ subtree")
    assert check.delegated_base("/system.slice/ssh.service", 1000) == (
        "/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service", "systemd default")
    assert check.delegated_base(own, 1000, "/sys/fs/cgroup/pirun") == ("/sys/fs/cgroup/pirun", "config cgroup_base")


class FakeHost:
    uid, gid, user = 1002, 1002, "pirun"

    def __init__(self, cfg_text=""):
        from runtime import hostconfig
        self.cfg = hostconfig.parse(cfg_text)
        self.cgroups_required = check.cgroups_required(self.cfg)
        self.net = self.cfg.net or "slirp4netns"


@pytest.mark.parametrize("cfg_text, required", [
    ("", False), ("net = none\n", False), ("pids_limit = 100\n", True), ("pids_limit = max\n", True),
    ("cgroup_base = /sys/fs/cgroup/pirun\n", True),
])
def test_cgroups_are_optional_unless_the_config_asks_for_them(cfg_text, required):
    items = check.check_cgroups(FakeHost(cfg_text), mounts_text=HYBRID)
    assert [i.name for i in items] == ["cgroup2", "cgroup controllers"]
    for item in items:
        assert item.status == MISSING and item.required is required
        assert "systemd.unified_cgroup_hierarchy=1" in item.fix and "role pirun_cgroup" in item.fix
        assert "cgroup_enable=memory to /boot/firmware/cmdline.txt" in item.fix
    assert "hybrid hierarchy: cgroup v1 controllers (cpu, memory, pids)" in items[0].detail
    code, _ = check.verdict([Item(OK, "userns", "fine")] + items)
    assert code == (1 if required else 0)


def test_network_requirement_follows_the_default_mode():
    assert check.network_required(FakeHost("")) == ("slirp4netns", True)
    assert check.network_required(FakeHost("net = pasta\n")) == ("pasta", True)
    assert check.network_required(FakeHost("net = none\n")) == (None, False)
    assert check.network_required(FakeHost("net = host\n")) == (None, False)


def test_render_and_verdict():
    items = [
        Item(OK, "userns", "works", fix="never shown"),
        Item(MISSING, "/dev/net/tun", "denied", fix="role pirun_prereqs, or by hand: chmod 0666 /dev/net/tun"),
        Item(WARN, "net.ipv4.ping_group_range", "1 0", fix="role pirun_prereqs, or by hand: sysctl -w x",
             required=False),
        Item(MISSING, "cgroup2", "hybrid", fix="role pirun_cgroup, or by hand: boot", required=False),
    ]
    lines = check.render(items)
    for line in lines:
        assert LINE.match(line), line
    assert lines[0].split() == ["ok", "userns", "works"]
    assert lines[1].endswith("denied; fix: role pirun_prereqs, or by hand: chmod 0666 /dev/net/tun")
    assert "hybrid (optional); fix: role pirun_cgroup" in lines[3]
    assert "(optional)" not in lines[2]
    assert len({line.index(line.split()[1]) for line in lines}) == 1, "items are aligned"
    code, summary = check.verdict(items)
    assert code == 1
    assert summary == ("check: 1 required item missing: /dev/net/tun (optional missing: cgroup2; "
                       "warnings: net.ipv4.ping_group_range)")
    code, summary = check.verdict([items[0], items[2], items[3]])
    assert code == 0 and summary.startswith("check: every required item is ok (optional missing: cgroup2")


def test_arguments():
    assert check.parse_args([]) == {"rootfs": None, "net": None}
    assert check.parse_args(["--rootfs", "/r", "--net=none"]) == {"rootfs": "/r", "net": "none"}
    assert check.parse_args(["--network", "pasta"])["net"] == "pasta"
    assert check.parse_args(["-h"]) is None
    for bad, text in ((["--bogus"], "unknown option '--bogus'"), (["--rootfs"], "--rootfs needs a value"),
                      (["--net", "slirp"], "is not one of")):
        with pytest.raises(SpecError) as e:
            check.parse_args(bad)
        assert text in e.value.message and e.value.exit_code == 125


def test_tool_privilege_of_this_hosts_tools():
    """newuidmap as installed here: setuid root (Debian's uidmap) - read from the real file."""
    path = check.find_tool("newuidmap")
    assert path, "newuidmap not found; fix: apt-get install uidmap"
    good, detail = check._tool_privilege(path, check.CAP_SETUID)
    st = os.stat(path)
    assert good == bool(st.st_uid == 0 and st.st_mode & 0o4000) or "file capability" in detail
    good, detail = check._tool_privilege("/bin/ls" if os.path.exists("/bin/ls") else "/usr/bin/ls",
                                         check.CAP_SETUID)
    assert not good and "neither setuid root nor has cap_setuid" in detail


@pytest.fixture
def cgroup_tree(tmp_path, monkeypatch):
    """A unified cgroup tree in a scratch directory (files only: the decision logic, not the kernel)."""
    root = tmp_path / "cgroup"
    service = root / "user.slice" / "user-1002.slice" / "user@1002.service"
    service.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    for f in ("cgroup.procs", "cgroup.subtree_control"):
        (service / f).write_text("")
    monkeypatch.setattr(check, "CGROUP_ROOT", str(root))
    monkeypatch.setattr(check, "raspberry_pi_model", lambda: None)
    mounts = f"cgroup2 {root} cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
    own = "0::/user.slice/user-1002.slice/user@1002.service/app.slice/pirun.scope\n"
    return root, service, mounts, own


@pytest.mark.parametrize("controllers, status", [
    ("cpu memory pids", OK), ("memory pids io", WARN), ("pids", MISSING), ("", MISSING),
])
def test_delegated_controllers(cgroup_tree, controllers, status):
    root, service, mounts, own = cgroup_tree
    (service / "cgroup.controllers").write_text(controllers + "\n")
    items = check.check_cgroups(FakeHost(), mounts_text=mounts, proc_cgroup_text=own)
    assert [(i.name, i.status) for i in items] == [("cgroup2", OK), ("cgroup controllers", status)]
    assert str(service) in items[1].detail
    if status != OK:
        assert "Delegate=cpu cpuset io memory pids" in items[1].fix and "role pirun_cgroup" in items[1].fix


def test_no_user_manager_cgroup(cgroup_tree):
    root, service, mounts, _own = cgroup_tree
    (service / "cgroup.controllers").write_text("cpu memory pids\n")
    # an SSH session outside user@1002.service: the user manager's cgroup is still found at systemd's path
    items = check.check_cgroups(FakeHost(), mounts_text=mounts, proc_cgroup_text="0::/system.slice/ssh.service\n")
    assert items[1].status == OK and items[1].detail == f"{service}: cpu memory pids"
    shutil.rmtree(service)
    items = check.check_cgroups(FakeHost(), mounts_text=mounts, proc_cgroup_text="0::/init.scope\n")
    assert items[1].status == MISSING and "no delegated cgroup" in items[1].detail
    assert "loginctl enable-linger pirun" in items[1].fix


def test_pi_with_memory_disabled_names_cmdline(cgroup_tree, monkeypatch):
    root, service, mounts, own = cgroup_tree
    (root / "cgroup.controllers").write_text("cpuset cpu io pids\n")
    monkeypatch.setattr(check, "raspberry_pi_model", lambda: "Raspberry Pi 4 Model B Rev 1.5")
    items = check.check_cgroups(FakeHost("pids_limit = 100\n"), mounts_text=mounts, proc_cgroup_text=own)
    assert items[1].status == MISSING and items[1].required
    assert "Raspberry Pi 4 Model B Rev 1.5: the memory controller is disabled" in items[1].detail
    assert "cgroup_enable=memory" in items[1].fix and "/boot/firmware/cmdline.txt" in items[1].fix


def test_cgroup_base_without_systemd_needs_the_session_inside(cgroup_tree, monkeypatch):
    root, service, mounts, _own = cgroup_tree
    base = root / "pirun" / "pirun"
    base.mkdir(parents=True)
    for f in ("cgroup.procs", "cgroup.subtree_control"):
        (base / f).write_text("")
    (base / "cgroup.controllers").write_text("memory pids cpu\n")
    monkeypatch.setattr(check, "systemd_booted", lambda: False)
    host = FakeHost()
    host.cfg = host.cfg.replace(cgroup_base=str(base))
    host.cgroups_required = True
    inside = check.check_cgroups(host, mounts_text=mounts, proc_cgroup_text="0::/pirun/pirun/login-7\n")
    assert [(i.name, i.status) for i in inside] == [("cgroup2", OK), ("cgroup controllers", OK),
                                                     ("cgroup placement", OK)]
    assert check.common_ancestor(f"{root}/init.scope", str(base)) == str(root)
    assert check.common_ancestor("/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a/b") == "/sys/fs/cgroup/a/b"
    # outside the base, and the common ancestor's cgroup.procs not writable (as for any user on a real host)
    monkeypatch.setattr(check, "writable", lambda path: str(base) in path)
    outside = check.check_cgroups(host, mounts_text=mounts, proc_cgroup_text="0::/init.scope\n")
    assert outside[1].status == OK
    assert outside[2].status == MISSING and outside[2].required
    assert f"runs in {root}/init.scope, outside cgroup_base {base}" in outside[2].detail
    assert f"echo SHELL_PID > {base}/cgroup.procs" in outside[2].fix


def test_undelegated_base_is_missing(cgroup_tree, monkeypatch):
    root, service, mounts, own = cgroup_tree
    (service / "cgroup.controllers").write_text("cpu memory pids\n")
    monkeypatch.setattr(check, "writable", lambda path: False)
    items = check.check_cgroups(FakeHost(), mounts_text=mounts, proc_cgroup_text=own)
    assert items[1].status == MISSING and "is not writable by pirun: not delegated" in items[1].detail
