"""runtime/check.py logic that needs no privileges: parsing of the kernel's files, the report's format, which
items decide the exit status, and the cgroup lines on test_cgroup.py's fake host, where the check runs the real
cgroup manager and must agree with it. The real report, as the test user, is tests/container/test_check.py;
check against a real run on faked hosts is tests/container/test_check_agrees.py."""
import os
import re
import struct

import pytest

from runtime import check, tools
from runtime.check import MISSING, OK, WARN, Item
from runtime.errors import SpecError

LINE = re.compile(r"^(ok|missing|warn) {2,}(\S.*?) {2,}(\S.*)$")



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


def test_free_subid_start_suggests_a_range_after_every_other():
    assert check.free_subid_start(SUBUID) == 301000
    assert check.free_subid_start("") == check.free_subid_start(None) == 100000


def test_ping_group_range():
    assert check.ping_range_covers("1\t0", [1002]) == (False, 1, 0)
    assert check.ping_range_covers("0 2147483647", [1002]) == (True, 0, 2147483647)
    assert check.ping_range_covers("1000 1001", [1002, 1000]) == (True, 1000, 1001)
    assert check.ping_range_covers("garbage", [0])[0] is False


class FakeHost:
    uid, gid, user = 1002, 1002, "pirun"

    def __init__(self, cfg_text=""):
        from runtime import hostconfig
        self.cfg = hostconfig.parse(cfg_text)
        self.cgroups_required = check.cgroups_required(self.cfg)
        self.net = self.cfg.net or "slirp4netns"


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
    path = tools.find("newuidmap")
    assert path, "newuidmap not found; fix: apt-get install uidmap"
    good, detail = check._tool_privilege(path, check.CAP_SETUID)
    st = os.stat(path)
    assert good == bool(st.st_uid == 0 and st.st_mode & 0o4000) or "file capability" in detail
    good, detail = check._tool_privilege("/bin/ls" if os.path.exists("/bin/ls") else "/usr/bin/ls",
                                         check.CAP_SETUID)
    assert not good and "neither setuid root nor has cap_setuid" in detail


# ---------------------------------------------------------------- cgroups: the manager on a fake host
# The fake cgroup tree and host of test_cgroup.py (the kernel's cgroup2 rules on a scratch directory); the check
# forks and runs the real cgroup manager on them.

M = 1 << 20
ME = os.getpid()


def cg_fakes():
    from test_cgroup import Cfg, FakeHost, FakeScope, FakeTree
    return Cfg, FakeHost, FakeScope, FakeTree


def forking_host(tree, **kw):
    """test_cgroup's fake host with real process identities: this test process is "run.py --check", and a
    process it forks starts in its cgroup (as after fork(2)) until something moves it."""
    _Cfg, FakeHost, FakeScope, _FakeTree = cg_fakes()

    class ForkingHost(FakeHost):
        def _where(self, pid):
            pid = os.getpid() if pid == "self" else int(pid)
            where = self.tree.where(pid)
            if where is None and pid == os.getpid():
                where = self.tree.where(ME)
            return where

        def proc_cgroup(self, pid="self"):
            where = self._where(pid)
            rel = "/" + os.path.relpath(where, self.tree.root) if where else "/"
            lines = [f"{i + 1}:{c}:/" for i, c in enumerate(self.hybrid_v1)]
            return "\n".join(lines + ["0::" + ("/" if rel == "/." else rel)]) + "\n"

        def pid(self):
            return os.getpid()

        def start_time(self, pid="self"):
            return 777 if os.path.exists(f"/proc/{os.getpid() if pid == 'self' else pid}") else None

        def start_scope(self, unit, slice_=None):
            rel = f"{self.user_slice}/user@1000.service/{slice_ or 'app.slice'}/{unit}"
            self.tree.make(rel, owned=True)
            self.tree.move(os.getpid(), self.tree.p(rel))
            self.scopes.append(unit)
            return FakeScope(self.tree, unit, "/" + rel, os.getpid())

    return ForkingHost(tree, **kw)


def config_tree(tmp_path, delegated=("cpu", "memory", "pids"), session="pirun/alice/session", **kw):
    """No systemd: cgroup_base /pirun/alice delegated to us, this process in `session`."""
    Cfg, _FakeHost, _FakeScope, FakeTree = cg_fakes()
    tree = FakeTree(tmp_path / "cg", **kw)
    tree.make("pirun", enable=delegated)
    tree.make("pirun/alice", owned=True)
    tree.make(session, procs=(ME,))
    return tree, Cfg(cgroup_base=tree.p("pirun/alice"))


def systemd_tree(tmp_path, delegated=("memory", "pids")):
    """A systemd host: this process in an SSH session scope, the user manager delegating `delegated`."""
    _Cfg, _FakeHost, _FakeScope, FakeTree = cg_fakes()
    tree = FakeTree(tmp_path / "cg")
    tree.make("user.slice/user-1000.slice/session-3.scope", procs=(ME,))
    app = tree.make("user.slice/user-1000.slice/user@1000.service/app.slice")
    tree.owned.add(tree.p("user.slice/user-1000.slice/user@1000.service"))
    tree._set(f"{app}/cgroup.subtree_control", " ".join(delegated))
    return tree


def leftovers(tree):
    return [os.path.join(d, n) for d, dirs, _ in os.walk(tree.root) for n in dirs
            if n.startswith("pirun-") and not n.endswith(".scope")]


def cg_items(cfg_text, probe, tree, cfg=None):
    host = FakeHost(cfg_text)
    if cfg is not None:
        host.cfg = host.cfg.replace(cgroup_base=cfg.cgroup_base)
        host.cgroups_required = True
    items = check.check_cgroups(host, probe=probe, fs=tree)
    assert [i.name for i in items] == ["cgroup2", "cgroup controllers"]
    assert leftovers(tree) == [], "the test cgroup must be removed"
    return items


@pytest.mark.parametrize("cfg_text, required", [
    ("", False), ("net = none\n", False), ("pids_limit = 100\n", True), ("pids_limit = max\n", True),
])
def test_hybrid_host_cgroups_are_optional_unless_the_config_asks(tmp_path, cfg_text, required):
    _Cfg, _FakeHost, _FakeScope, FakeTree = cg_fakes()
    tree = FakeTree(tmp_path / "cg")
    tree.make("session", procs=(ME,), owned=True)
    probe = forking_host(tree, hybrid_v1=("cpu", "memory", "pids"))
    items = cg_items(cfg_text, probe, tree)
    for item in items:
        assert item.status == MISSING and item.required is required
        assert "unified cgroup v2 hierarchy" in item.fix and "pirun_cgroup" in item.fix
    assert "hybrid hierarchy: cpu, memory, pids bound to cgroup v1" in items[0].detail
    assert "bound to cgroup v1 on this host" in items[1].detail
    code, _ = check.verdict([Item(OK, "userns", "fine")] + items)
    assert code == (1 if required else 0)


@pytest.mark.parametrize("delegated, status", [
    (("cpu", "memory", "pids"), OK), (("memory", "pids"), WARN), (("pids",), MISSING), ((), MISSING),
])
def test_config_base_controllers(tmp_path, delegated, status):
    tree, cfg = config_tree(tmp_path, delegated)
    items = cg_items("", forking_host(tree), tree, cfg=cfg)
    assert items[0].status == OK and items[0].detail == f"unified hierarchy at {tree.root}"
    assert items[1].status == status, items[1]
    if status == OK:
        assert items[1].detail.startswith(f"{tree.p('pirun/alice')}: cpu memory pids; a test cgroup took")
    elif status == WARN:
        assert "--cpus and --cpu-weight fail: cgroup cpu controller: not delegated" in items[1].detail
        assert not items[1].required
    else:
        assert "controller" in items[1].detail and "not delegated" in items[1].detail
        assert items[1].required
    assert tree.where(ME) == tree.p("pirun/alice/session"), "the check process itself never moves"


def test_config_base_outside_the_session_is_the_managers_error(tmp_path):
    tree, cfg = config_tree(tmp_path, session="sessions/s1")
    items = cg_items("", forking_host(tree), tree, cfg=cfg)
    assert items[1].status == MISSING and items[1].required
    assert f"write access to {tree.root}/cgroup.procs" in items[1].detail
    assert "session placed inside" in items[1].fix


def test_systemd_host_gets_a_scope_like_a_run(tmp_path):
    tree = systemd_tree(tmp_path, delegated=("cpu", "memory", "pids"))
    host = forking_host(tree, systemd=True)
    items = cg_items("", host, tree)
    assert [i.status for i in items] == [OK, OK], items
    app = tree.p("user.slice/user-1000.slice/user@1000.service/app.slice")
    scopes = [d for d in os.listdir(app) if d.endswith(".scope")]
    assert len(scopes) == 1 and items[1].detail.startswith(f"{app}/{scopes[0]}: cpu memory pids")
    assert tree.where(ME).endswith("/session-3.scope"), "the check process itself never moves"


def test_systemd_host_without_delegation_names_the_drop_in(tmp_path):
    tree = systemd_tree(tmp_path, delegated=("pids",))
    items = cg_items("pids_limit = 100\n", forking_host(tree, systemd=True), tree)
    assert items[1].status == MISSING and items[1].required
    assert "not delegated to uid 1000 by systemd" in items[1].detail
    assert "Delegate=cpu cpuset io memory pids" in items[1].fix


def test_pi_with_memory_disabled_names_cmdline(tmp_path):
    tree, cfg = config_tree(tmp_path, ("cpu", "pids"), controllers=("cpu", "pids"))  # cgroup_disable=memory
    items = cg_items("", forking_host(tree, pi=True), tree, cfg=cfg)
    assert items[1].status == MISSING
    assert "memory controller: not enabled in this kernel" in items[1].detail
    assert "cgroup_enable=memory" in items[1].fix and "/boot/firmware/cmdline.txt" in items[1].fix


@pytest.mark.parametrize("delegated", [("cpu", "memory", "pids"), ("memory", "pids"), ("pids",), ()])
@pytest.mark.parametrize("mode", ["config", "systemd"])
def test_check_verdict_agrees_with_the_manager(tmp_path, delegated, mode):
    """ok/warn exactly when a run's manager, on a fresh copy of the same host, creates a cgroup for --memory
    --pids (and --cpus for ok)."""
    from runtime.cgroup import CgroupManager
    from runtime.errors import CgroupError
    from runtime.spec import Limits

    def host(name):
        d = tmp_path / name
        if mode == "systemd":
            tree = systemd_tree(d, delegated)
            return tree, forking_host(tree, systemd=True), None
        tree, cfg = config_tree(d, delegated)
        return tree, forking_host(tree), cfg

    def run_works(limits):
        tree, probe, cfg = host(f"run-{limits.cpus}")
        m = CgroupManager(limits, cfg, True, probe=probe, fs=tree)
        try:
            m.create()
            return True
        except CgroupError:
            return False
        finally:
            m.remove()

    tree, probe, cfg = host("check")
    status = cg_items("", probe, tree, cfg=cfg)[1].status
    full = run_works(Limits(memory=64 * M, pids=64, cpus=1.0))
    basic = run_works(Limits(memory=64 * M, pids=64))
    assert status == (OK if full else WARN if basic else MISSING)
