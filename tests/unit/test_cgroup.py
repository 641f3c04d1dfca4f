"""runtime.cgroup logic on a fake cgroup tree (a temporary directory), no privileges, no kernel cgroups.

The fake tree follows the kernel's cgroup2 rules that the manager's logic depends on: interface files appear in a
new child according to the parent's cgroup.subtree_control; `+ctl` needs the controller in cgroup.controllers and
fails with EBUSY while the cgroup holds processes (no-internal-process rule); moving a process into a cgroup with
controllers enabled for its children fails with EBUSY; rmdir fails with EBUSY while processes or children remain;
write permission follows the directories "owned" by the user (delegation), and moving a process needs write access
to cgroup.procs of the common ancestor. Real cgroups are exercised in the VM (molecule/shared/verify_cgroup.yml).
"""
import errno
import os
import shutil

import pytest

import runtime.cgroup as cg
from runtime.cgroup import discover, manager
from runtime.cgroup.fs import CgroupFS, write_error
from runtime.errors import CgroupError, SpecError
from runtime.launcher import Ended
from runtime.spec import Limits

M = 1 << 20
CORE = ("cgroup.procs", "cgroup.subtree_control", "cgroup.controllers", "cgroup.events", "cgroup.kill",
        "cpu.stat")
FILES = {
    "memory": {"memory.max": "max", "memory.swap.max": "max", "memory.events":
               "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", "memory.peak": "0",
               "memory.current": "0"},
    "pids": {"pids.max": "max", "pids.peak": "0", "pids.current": "0", "pids.events": "max 0\n"},
    "cpu": {"cpu.max": "max 100000", "cpu.weight": "100"},
}


class FakeTree(CgroupFS):
    def __init__(self, root, controllers=("cpu", "memory", "pids")):
        self.root = str(root)
        self.owned = set()          # directories delegated to "us"
        self.log = []               # ("write", path, value) / ("mkdir", path) / ("rmdir", path)
        self.killed = []
        os.makedirs(self.root)
        self._populate(self.root, controllers)

    # -- building the fake host
    def _populate(self, path, controllers):
        for name in CORE:
            with open(f"{path}/{name}", "w") as f:
                f.write({"cgroup.controllers": " ".join(sorted(controllers)),
                         "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n",
                         "cgroup.events": "populated 0\nfrozen 0\n"}.get(name, ""))
        parent = os.path.dirname(path)
        if path != self.root:
            for c in self._get(f"{parent}/cgroup.subtree_control").split():
                for fname, value in FILES[c].items():
                    with open(f"{path}/{fname}", "w") as f:
                        f.write(value)

    def make(self, rel, procs=(), owned=False, enable=()):
        """Create a cgroup (as root/systemd would), with processes and controllers enabled below it."""
        path = self.p(rel)
        parts = rel.strip("/").split("/")
        cur = self.root
        for part in parts:
            nxt = f"{cur}/{part}"
            if not os.path.isdir(nxt):
                os.mkdir(nxt)
                avail = self._get(f"{cur}/cgroup.subtree_control").split()
                self._populate(nxt, avail)
            cur = nxt
        if enable:
            self._set(f"{path}/cgroup.subtree_control", " ".join(enable))
        for pid in procs:
            self._set(f"{path}/cgroup.procs", self._get(f"{path}/cgroup.procs") + f"{pid}\n")
        if owned:
            self.owned.add(path)
        return path

    def p(self, rel):
        return self.root + "/" + rel.strip("/") if rel.strip("/") else self.root

    def where(self, pid):
        for dirpath, _dirs, files in os.walk(self.root):
            if "cgroup.procs" in files and str(pid) in self._get(f"{dirpath}/cgroup.procs").split():
                return dirpath
        return None

    def _get(self, path):
        with open(path) as f:
            return f.read()

    def _set(self, path, value):
        with open(path, "w") as f:
            f.write(value)

    # -- the CgroupFS interface, with the kernel's rules
    def _deny(self, path, value, err):
        raise write_error(path, str(value).encode(), OSError(err, os.strerror(err)), self._fix)

    def write(self, path, value, fix=None):
        self.log.append(("write", path, str(value)))
        self._fix = fix
        if not self.writable(path):
            self._deny(path, value, errno.EACCES)
        if not os.path.exists(path):
            self._deny(path, value, errno.ENOENT)
        d, name = os.path.split(path)
        value = str(value)
        if name == "cgroup.subtree_control":
            current = set(self._get(path).split())
            avail = set(self._get(f"{d}/cgroup.controllers").split())
            for tok in value.split():
                c = tok[1:]
                if c not in avail:
                    self._deny(path, value, errno.ENOENT)
                if tok[0] == "+":
                    if self._get(f"{d}/cgroup.procs").split():
                        self._deny(path, value, errno.EBUSY)
                    current.add(c)
                else:
                    current.discard(c)
            self._set(path, " ".join(sorted(current)))
        elif name == "cgroup.procs":
            pid = value.strip()
            src = self.where(pid)
            if self._get(f"{d}/cgroup.subtree_control").split():
                self._deny(path, value, errno.EBUSY)
            if src is not None:
                anc = discover.common_ancestor(src, d)
                if not self.writable(f"{anc}/cgroup.procs"):
                    self._deny(path, value, errno.EACCES)
                self.move(pid, d)
            else:
                self._set(path, self._get(path) + pid + "\n")
        elif name == "cgroup.kill":
            self.killed.append(d)
            self._set(f"{d}/cgroup.procs", "")
        else:
            self._set(path, value)

    def move(self, pid, dest):
        src = self.where(pid)
        if src:
            self._set(f"{src}/cgroup.procs",
                      "".join(p + "\n" for p in self._get(f"{src}/cgroup.procs").split() if p != str(pid)))
        self._set(f"{dest}/cgroup.procs", self._get(f"{dest}/cgroup.procs") + f"{pid}\n")

    def read(self, path):
        if os.path.basename(path) == "cgroup.events" and os.path.exists(path):
            populated = 1 if self._get(f"{os.path.dirname(path)}/cgroup.procs").split() else 0
            return f"populated {populated}\nfrozen 0\n"
        return super().read(path)

    def mkdir(self, path, fix=None):
        self.log.append(("mkdir", path))
        if not self.writable(os.path.dirname(path)):
            raise CgroupError(f"cgroup mkdir {path}: Permission denied (EACCES)", fix)
        if os.path.exists(path):
            raise CgroupError(f"cgroup mkdir {path}: File exists (EEXIST)", fix)
        os.mkdir(path)
        self._populate(path, self._get(f"{os.path.dirname(path)}/cgroup.subtree_control").split())

    def rmdir(self, path):
        self.log.append(("rmdir", path))
        if not os.path.isdir(path):
            return None
        if not self.writable(os.path.dirname(path)):
            return OSError(errno.EACCES, "Permission denied")
        if self._get(f"{path}/cgroup.procs").split() or any(
                os.path.isdir(f"{path}/{e}") for e in os.listdir(path)):
            return OSError(errno.EBUSY, "Device or resource busy")
        shutil.rmtree(path)
        return None

    def writable(self, path):
        d = path if os.path.isdir(path) else os.path.dirname(path)
        return any(d == o or d.startswith(o + "/") for o in self.owned)


class FakeScope:
    def __init__(self, tree, unit, cgroup, holder_pid):
        self.tree, self.unit, self.cgroup, self.holder_pid = tree, unit, cgroup, holder_pid


class FakeHost(discover.Probe):
    """A host: our pid 4242 (started at tick 777), uid 1000, systemd or not, a Pi or not."""

    def __init__(self, tree, systemd=False, pi=False, hybrid_v1=(), user_slice="user.slice/user-1000.slice"):
        super().__init__(tree)
        self.tree, self.systemd, self.pi, self.hybrid_v1 = tree, systemd, pi, hybrid_v1
        self.alive = {"4242": 777}
        self.user_slice = user_slice
        self.scopes = []
        self.scope_error = None
        self.slices = []

    def proc_cgroup(self, pid="self"):
        where = self.tree.where(4242 if pid == "self" else pid)
        rel = "/" + os.path.relpath(where, self.tree.root) if where else "/"
        rel = "/" if rel == "/." else rel
        lines = [f"{i + 1}:{c}:/" for i, c in enumerate(self.hybrid_v1)]
        return "\n".join(lines + [f"0::{rel}"]) + "\n"

    def mountinfo(self):
        return (f"22 1 0:20 / / rw - ext4 /dev/root rw\n"
                f"31 22 0:28 / {self.tree.root} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")

    def systemd_booted(self):
        return self.systemd

    def is_pi(self):
        return self.pi

    def pid(self):
        return 4242

    def uid(self):
        return 1000

    def start_time(self, pid="self"):
        return self.alive.get("4242" if pid == "self" else str(pid))

    def start_scope(self, unit, slice_=None):
        if self.scope_error:
            raise self.scope_error
        self.slices.append(slice_)
        rel = f"{self.user_slice}/user@1000.service/{slice_ or 'app.slice'}/{unit}"
        self.tree.make(rel, owned=True)
        self.tree.move(4242, self.tree.p(rel))              # systemd moved run.py into the new scope
        scope = FakeScope(self.tree, unit, "/" + rel, 4242)
        self.scopes.append(scope)
        return scope


class Cfg:
    def __init__(self, cgroup_base=None, pids_limit=None):
        self.cgroup_base, self.pids_limit = cgroup_base, pids_limit


def mgr(tree, host, limits, cfg=None, required=None):
    if required is None:
        required = limits.stats or limits.requested()
    return cg.CgroupManager(limits, cfg, required, probe=host, fs=tree)


def read(path):
    with open(path) as f:
        return f.read().strip()


@pytest.fixture
def tree(tmp_path):
    return FakeTree(tmp_path / "cg")


# ---------------------------------------------------------------- (a) cgroup_base from the host configuration

def config_host(tree, **kw):
    """No systemd: the role made /pirun/alice with +cpu +memory +pids, the session in /pirun/alice/session."""
    tree.make("pirun", enable=("cpu", "memory", "pids"))
    tree.make("pirun/alice", owned=True, enable=("cpu", "memory", "pids"))
    tree.make("pirun/alice/session", procs=(4242,))
    tree._set(tree.p("pirun/alice/cgroup.subtree_control"), "")     # the role left it to us
    return FakeHost(tree, **kw), Cfg(cgroup_base=tree.p("pirun/alice"))


def test_config_base_leaf_limits_and_order(tree):
    host, cfg = config_host(tree)
    m = mgr(tree, host, Limits(memory=16 * M, pids=64, cpus=0.2, cpu_weight=50), cfg)
    m.create()
    leaf = tree.p("pirun/alice/pirun-4242-777")
    assert m.leaf == leaf
    assert read(tree.p("pirun/alice/cgroup.subtree_control")) == "cpu memory pids"
    assert read(f"{leaf}/memory.max") == str(16 * M)
    assert read(f"{leaf}/memory.swap.max") == "0"          # swap off unless --memory-swap
    assert read(f"{leaf}/pids.max") == "64"
    assert read(f"{leaf}/cpu.max") == "20000 100000"
    assert read(f"{leaf}/cpu.weight") == "50"
    ops = [(op[0], os.path.basename(op[1])) for op in tree.log]
    # controllers enabled (one write) before the leaf exists; every limit written before any process moves
    assert ops.index(("write", "cgroup.subtree_control")) < ops.index(("mkdir", "pirun-4242-777"))
    assert [o for o in ops if o[1] == "cgroup.subtree_control"] == [("write", "cgroup.subtree_control")]
    assert ("write", "cgroup.procs") not in ops
    tree.make("pirun/alice/session", procs=(5000,))          # process I, forked by run.py
    m.add(5000)
    assert tree.where(5000) == leaf
    ops = [(op[0], os.path.basename(op[1])) for op in tree.log]
    assert ops[-1] == ("write", "cgroup.procs")
    m.remove()
    assert not os.path.exists(leaf)


def test_config_base_with_placeholders(tree, monkeypatch):
    host, cfg = config_host(tree)
    cfg.cgroup_base = tree.p("pirun/{user}")
    monkeypatch.setattr(manager, "expand_cgroup_base", lambda b: b.replace("{user}", "alice"))
    m = mgr(tree, host, Limits(pids=10), cfg)
    m.create()
    assert m.leaf == tree.p("pirun/alice/pirun-4242-777")
    m.remove()


def test_config_base_outside_session_explains_common_ancestor(tree):
    tree.make("pirun", enable=("cpu", "memory", "pids"))
    tree.make("pirun/alice", owned=True)
    tree.make("sessions/s1", procs=(4242,))
    host = FakeHost(tree)
    m = mgr(tree, host, Limits(memory=16 * M), Cfg(cgroup_base=tree.p("pirun/alice")))
    with pytest.raises(CgroupError) as e:
        m.create()
    line = e.value.line()
    assert "memory" in line and "common" not in line or "cgroup.procs" in line
    assert f"write access to {tree.root}/cgroup.procs" in line and "fix:" in line
    assert e.value.exit_code == 125


def test_config_base_not_writable(tree):
    tree.make("pirun/alice/session", procs=(4242,))
    host = FakeHost(tree)
    with pytest.raises(CgroupError, match="not writable by uid 1000"):
        mgr(tree, host, Limits(pids=5), Cfg(cgroup_base=tree.p("pirun/alice"))).create()


def test_config_base_missing_controller_names_it_and_the_fix(tree):
    tree.make("pirun", enable=("pids",))
    tree.make("pirun/alice", owned=True)
    tree.make("pirun/alice/session", procs=(4242,))
    host = FakeHost(tree)
    with pytest.raises(CgroupError) as e:
        mgr(tree, host, Limits(memory=16 * M, pids=5), Cfg(cgroup_base=tree.p("pirun/alice"))).create()
    line = e.value.line()
    assert line.startswith("cgroup memory controller: not delegated to ")
    assert "pirun_cgroup" in line or "subtree_control" in line
    assert "cgroup_enable=memory" not in line                # not a Pi
    assert not [d for d in os.listdir(tree.p("pirun/alice")) if d.startswith("pirun-")]   # nothing left


def test_memory_missing_from_kernel_on_a_pi(tmp_path):
    tree = FakeTree(tmp_path / "cg", controllers=("cpu", "pids"))     # firmware's cgroup_disable=memory
    tree.make("pirun", enable=("pids",))
    tree.make("pirun/alice", owned=True)
    tree.make("pirun/alice/session", procs=(4242,))
    host = FakeHost(tree, pi=True)
    with pytest.raises(CgroupError) as e:
        mgr(tree, host, Limits(memory=16 * M), Cfg(cgroup_base=tree.p("pirun/alice"))).create()
    line = e.value.line()
    assert "memory controller: not enabled in this kernel" in line
    assert "cgroup_enable=memory" in line and "/boot/firmware/cmdline.txt" in line and "reboot" in line
    assert "pirun_cgroup" in line


def test_no_internal_process_rule_reported(tree):
    tree.make("pirun", enable=("cpu", "memory", "pids"))
    tree.make("pirun/alice", owned=True, procs=(4242,))       # run.py sits in the base itself
    host = FakeHost(tree)
    host.alive["4242"] = 777
    # not "own" mode: other processes share the cgroup
    tree.make("pirun/alice", procs=(11,))
    with pytest.raises(CgroupError) as e:
        mgr(tree, host, Limits(pids=5), Cfg(cgroup_base=tree.p("pirun/alice"))).create()
    line = e.value.line()
    assert "cgroup.subtree_control" in line and "EBUSY" in line and "no-internal-process" in line


def test_stale_leaves_of_dead_run_py_are_removed(tree):
    host, cfg = config_host(tree)
    base = tree.p("pirun/alice")
    host.alive["5555"] = 123
    for name in ("pirun-1111-99", "pirun-1111-99-run", "pirun-5555-123", "pirun-5555-124", "other",
                 "pirun-x-1"):
        tree.make(f"pirun/alice/{name}")
    tree.make("pirun/alice/pirun-5555-124", procs=(31337,))    # dead owner (pid reused), a straggler left
    m = mgr(tree, host, Limits(pids=5), cfg)
    m.create()
    left = sorted(os.listdir(base))
    assert "pirun-1111-99" not in left and "pirun-1111-99-run" not in left and "pirun-5555-124" not in left
    assert {"pirun-5555-123", "other", "pirun-x-1", "pirun-4242-777"} <= set(left)
    assert tree.p("pirun/alice/pirun-5555-124") in tree.killed
    m.remove()
    m.remove()                                                  # idempotent
    assert "pirun-4242-777" not in os.listdir(base)


def test_remove_kills_stragglers_then_removes(tree):
    host, cfg = config_host(tree)
    m = mgr(tree, host, Limits(pids=5), cfg)
    m.create()
    tree.make("pirun/alice/session", procs=(5000,))
    m.add(5000)
    m.remove()                          # a daemonized straggler still in the leaf
    assert tree.killed == [m.leaf]
    assert not os.path.exists(m.leaf)


# ---------------------------------------------------------------- OOM, stats, swap

def test_oom_line_only_when_killed_and_oom_kill(tree):
    host, cfg = config_host(tree)
    m = mgr(tree, host, Limits(memory=16 * M), cfg)
    m.create()
    assert m.result(Ended(signal=9)) is None                    # SIGKILL, no OOM
    tree._set(f"{m.leaf}/memory.events", "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n")
    line = "container killed: out of memory (memory.max=16777216, oom_kill=1)"
    assert m.result(Ended(signal=9)) == line                    # PID 1 killed by SIGKILL
    assert m.result(Ended(code=137)) == line                    # a shell reporting its killed child
    assert m.result(Ended(code=0)) is None and m.result(Ended(signal=15)) is None
    assert m.result(Ended(code=1)) is None and m.result(Ended(lost=True)) is None
    m.remove()


def test_memory_swap_is_swap_max(tree):
    host, cfg = config_host(tree)
    m = mgr(tree, host, Limits(memory=16 * M, memory_swap=32 * M), cfg)
    m.create()
    assert read(f"{m.leaf}/memory.swap.max") == str(32 * M)     # cli.py: --memory-swap is memory.swap.max
    m.remove()


def test_swap_file_missing(tree):
    host, cfg = config_host(tree)
    del FILES["memory"]["memory.swap.max"]
    try:
        m = mgr(tree, host, Limits(memory=16 * M), cfg)
        m.create()                                              # no swap accounting: nothing to turn off
        m.remove()
        with pytest.raises(CgroupError, match="memory.swap.max"):
            mgr(tree, host, Limits(memory=16 * M, memory_swap=32 * M), cfg).create()
    finally:
        FILES["memory"]["memory.swap.max"] = "max"


def test_stats(tree):
    host, cfg = config_host(tree)
    m = mgr(tree, host, Limits(stats=True), cfg)
    m.create()
    assert read(f"{m.leaf}/pids.max") == "2048"                 # the default applies with a usable cgroup
    tree._set(f"{m.leaf}/memory.peak", "12902400")
    tree._set(f"{m.leaf}/pids.peak", "3")
    tree._set(f"{m.leaf}/cpu.stat", "usage_usec 523000\nuser_usec 400000\nsystem_usec 123000\n")
    s = m.stats()
    assert s.startswith("stats: ") and "\n" not in s
    assert "memory.peak=12902400 (12.3M)" in s and "cpu.usage_usec=523000 (0.52s)" in s and "pids.peak=3" in s
    m.remove()


def test_stats_without_memory_peak(tree):
    host, cfg = config_host(tree)
    del FILES["memory"]["memory.peak"]
    del FILES["pids"]["pids.peak"]
    try:
        m = mgr(tree, host, Limits(stats=True), cfg)
        m.create()
        s = m.stats()
        assert "memory.current=0" in s and "not in this kernel" in s
        m.remove()
    finally:
        FILES["memory"]["memory.peak"] = "0"
        FILES["pids"]["pids.peak"] = "0"


def test_host_pids_limit(tree):
    host, cfg = config_host(tree)
    cfg.pids_limit = 500
    m = mgr(tree, host, Limits(memory=16 * M), cfg)
    m.create()
    assert read(f"{m.leaf}/pids.max") == "500"
    m.remove()
    cfg.pids_limit = 0
    m = mgr(tree, host, Limits(memory=16 * M), cfg)
    m.create()
    assert read(f"{m.leaf}/pids.max") == "max"                  # no default limit written
    m.remove()


# ---------------------------------------------------------------- (b) run.py alone in a delegated cgroup

def test_own_delegated_cgroup(tree):
    own = tree.make("user.slice/user-1000.slice/user@1000.service/app.slice/run.scope", procs=(4242,),
                    owned=True)
    tree._set(tree.p("user.slice/user-1000.slice/user@1000.service/app.slice/cgroup.subtree_control"),
              "cpu memory pids")
    tree._set(f"{own}/cgroup.controllers", "cpu memory pids")
    host = FakeHost(tree, systemd=True)
    m = mgr(tree, host, Limits(memory=16 * M), Cfg())
    m.create()
    assert tree.where(4242) == f"{own}/pirun-4242-777-run"      # run.py left the cgroup it was alone in
    assert m.leaf == f"{own}/pirun-4242-777"
    assert set(read(f"{own}/cgroup.subtree_control").split()) == {"memory", "pids"}
    assert host.scopes == []                                     # no systemd-run needed
    tree.make(os.path.relpath(f"{own}/pirun-4242-777-run", tree.root), procs=(5000,))
    m.add(5000)
    assert tree.where(5000) == m.leaf
    tree.move(5000, tree.root)                                   # I exited
    m.remove()
    assert tree.where(4242) == own and os.listdir(own) and not [
        e for e in os.listdir(own) if e.startswith("pirun-")]
    assert read(f"{own}/cgroup.subtree_control") == ""


def test_own_cgroup_shared_with_others_uses_a_scope(tree):
    own = tree.make("user.slice/user-1000.slice/user@1000.service/app.slice/term.scope", procs=(4242, 17),
                    owned=True)
    host = FakeHost(tree, systemd=True)
    tree._set(tree.p("user.slice/user-1000.slice/user@1000.service/app.slice/cgroup.subtree_control"),
              "cpu memory pids")
    m = mgr(tree, host, Limits(pids=64), Cfg())
    m.create()
    assert len(host.scopes) == 1 and tree.where(4242).endswith("pirun-4242-777.scope/supervisor")
    assert tree.where(17) == own                                 # the other processes stay where they were


# ---------------------------------------------------------------- (c) systemd: transient delegated scope

def systemd_host(tree, delegated=("memory", "pids"), **kw):
    tree.make("user.slice/user-1000.slice/session-3.scope", procs=(4242,))
    app = tree.make("user.slice/user-1000.slice/user@1000.service/app.slice")
    tree.owned.add(tree.p("user.slice/user-1000.slice/user@1000.service"))
    tree._set(f"{app}/cgroup.subtree_control", " ".join(delegated))
    return FakeHost(tree, systemd=True, **kw)


def test_ssh_session_gets_a_transient_scope(tree):
    host = systemd_host(tree)
    m = mgr(tree, host, Limits(memory=16 * M, pids=64), Cfg())
    m.create()
    scope = host.scopes[0]
    assert scope.unit == "pirun-4242-777.scope" and host.slices == [None]
    sp = tree.p(scope.cgroup)
    assert tree.where(4242) == f"{sp}/supervisor"                # run.py left the scope's root first
    assert read(f"{sp}/cgroup.subtree_control") == "memory pids"
    assert m.leaf == f"{sp}/container"
    assert read(f"{m.leaf}/memory.max") == str(16 * M) and read(f"{m.leaf}/pids.max") == "64"
    ops = [(op[0], op[1][len(sp):]) for op in tree.log if op[1].startswith(sp)]
    assert ops[:4] == [("mkdir", "/supervisor"), ("write", "/supervisor/cgroup.procs"),
                       ("write", "/cgroup.subtree_control"), ("mkdir", "/container")]
    tree.make(os.path.relpath(f"{sp}/supervisor", tree.root), procs=(5000,))    # I, forked by run.py
    m.add(5000)                                                 # a plain write: the scope is ours
    assert tree.where(5000) == m.leaf
    m.release(5000)                                              # I forked PID 1: only the container stays
    assert tree.where(5000) == f"{sp}/supervisor"
    tree.move(5000, tree.root)                                   # the container ended
    m.remove()
    assert not os.path.exists(m.leaf)
    assert os.listdir(sp) and tree.where(4242) == f"{sp}/supervisor"  # run.py stays: systemd removes the scope


def test_session_scope_elsewhere_is_refused_with_the_rule(tree):
    """Without the scope, a move from the SSH session into the user's tree fails: the error says why."""
    host = systemd_host(tree)
    m = mgr(tree, host, Limits(pids=64), Cfg())
    m.create()
    tree.make("user.slice/user-1000.slice/session-3.scope", procs=(5001,))
    with pytest.raises(CgroupError) as e:
        m.add(5001)
    assert "Permission denied (EACCES)" in e.value.line() and "common ancestor" in e.value.line()
    m.remove()


def test_systemd_cpu_not_delegated(tree):
    host = systemd_host(tree)
    with pytest.raises(CgroupError) as e:
        mgr(tree, host, Limits(cpus=0.2), Cfg()).create()
    line = e.value.line()
    assert line.startswith("cgroup cpu controller: not delegated to uid 1000 by systemd")
    assert "delegates only: memory pids" in line
    assert "user@.service.d/delegate.conf" in line and "Delegate=cpu cpuset io memory pids" in line
    assert "pirun_cgroup" in line


def test_systemd_scope_failure_propagates(tree):
    host = systemd_host(tree)
    host.scope_error = CgroupError("cgroup scope x: systemd-run --user --scope failed (exit 1): no bus", "fix")
    with pytest.raises(CgroupError, match="no bus"):
        mgr(tree, host, Limits(pids=5), Cfg()).create()


def own_host(tree, others=()):
    app = "user.slice/user-1000.slice/user@1000.service/app.slice"
    tree.make(app, enable=("cpu", "memory", "pids"))
    own = tree.make(f"{app}/run.scope", procs=(4242, *others), owned=True)
    return FakeHost(tree, systemd=True), own


def test_defaults_only_in_own_cgroup(tree):
    host, own = own_host(tree)
    m = mgr(tree, host, Limits(), Cfg(), required=False)
    m.create()
    assert read(f"{m.leaf}/pids.max") == "2048" and host.scopes == []
    m.remove()


def test_defaults_only_failure_is_silent(tree, monkeypatch):
    host, own = own_host(tree)

    def broken(path, fix=None):
        raise CgroupError(f"cgroup mkdir {path}: No space left on device (ENOSPC)")

    monkeypatch.setattr(tree, "mkdir", broken)
    m = mgr(tree, host, Limits(), Cfg(), required=False)
    m.create()
    assert m.leaf is None and m.result(Ended(signal=9)) is None and m.stats() == "stats: no cgroup"
    m.add(5000)
    m.remove()
    assert tree.where(4242) == own                               # run.py is back where it was


def test_defaults_only_never_starts_a_scope(tree):
    host = systemd_host(tree)
    m = mgr(tree, host, Limits(), Cfg(), required=False)
    m.create()
    assert m.leaf is None and host.scopes == []


def test_host_config_pids_limit_makes_cgroups_required(tree):
    host = systemd_host(tree)
    cfg = Cfg(pids_limit=1000)
    m = cg.manager_for(Limits(), cfg)
    assert m.required
    m = mgr(tree, host, Limits(), cfg, required=True)
    m.create()
    assert read(f"{m.leaf}/pids.max") == "1000" and host.slices == [None]
    m.remove()


def test_host_config_cgroup_base_names_the_slice(tree):
    host = systemd_host(tree)
    tree.make("user.slice/user-1000.slice/user@1000.service/pirun.slice")
    tree._set(tree.p("user.slice/user-1000.slice/user@1000.service/pirun.slice/cgroup.subtree_control"),
              "memory pids")
    cfg = Cfg(cgroup_base=tree.p("user.slice/user-1000.slice/user@1000.service/pirun.slice"))
    m = mgr(tree, host, Limits(memory=16 * M), cfg)
    m.create()
    assert host.slices == ["pirun.slice"]
    assert m.leaf == tree.p("user.slice/user-1000.slice/user@1000.service/pirun.slice/pirun-4242-777.scope/"
                            "container")
    assert read(f"{m.leaf}/pids.max") == "2048"
    m.remove()


def test_host_config_base_outside_user_tree_on_systemd(tree):
    host = systemd_host(tree)
    with pytest.raises(CgroupError, match="not in a user's systemd subtree"):
        mgr(tree, host, Limits(), Cfg(cgroup_base=tree.p("pirun")), required=True).create()


def test_host_config_asks_on_hybrid_host(tree):
    tree.make("", procs=(4242,))
    host = FakeHost(tree, hybrid_v1=("memory", "pids"))
    with pytest.raises(CgroupError, match="^cgroup pids controller: bound to cgroup v1"):
        mgr(tree, host, Limits(), Cfg(pids_limit=2048), required=True).create()


# ---------------------------------------------------------------- hosts without a usable cgroup

def test_hybrid_host_memory_is_an_error_naming_v1(tree):
    tree.make("", procs=(4242,))
    host = FakeHost(tree, hybrid_v1=("cpu", "memory", "pids"))
    with pytest.raises(CgroupError) as e:
        mgr(tree, host, Limits(memory=16 * M), Cfg()).create()
    line = e.value.line()
    assert line.startswith("cgroup memory controller: bound to cgroup v1")
    assert "pirun_cgroup" in line and "fix:" in line and e.value.exit_code == 125


def test_no_cgroup_no_systemd_stats_is_an_error(tree):
    tree.make("", procs=(4242,))
    host = FakeHost(tree)
    with pytest.raises(CgroupError, match="cgroup for --stats: no delegated cgroup"):
        mgr(tree, host, Limits(stats=True), Cfg()).create()


def test_no_cgroup2_mounted(tree):
    host = FakeHost(tree)
    host.mountinfo = lambda: "22 1 0:20 / / rw - ext4 /dev/root rw\n"
    with pytest.raises(CgroupError, match="no cgroup v2 hierarchy"):
        mgr(tree, host, Limits(pids=3), Cfg()).create()


# ---------------------------------------------------------------- manager_for: checks and the hot path

@pytest.mark.parametrize("limits,msg", [
    (Limits(memory_swap=32 * M), "--memory-swap needs --memory"),
    (Limits(memory=0), "--memory: must be more than 0"),
    (Limits(pids=0), "--pids: must be at least 1"),
    (Limits(cpus=0.001), "--cpus: 0.001 is below the minimum"),
    (Limits(cpus=-1.0), "--cpus"),
    (Limits(cpus=float("nan")), "--cpus"),
    (Limits(cpu_weight=0), "--cpu-weight: 0 is outside 1..10000"),
    (Limits(cpu_weight=10001), "--cpu-weight"),
])
def test_bad_limits_are_spec_errors_before_anything(limits, msg):
    with pytest.raises(SpecError, match=msg.replace(".", r"\.").replace("(", r"\(")):
        cg.manager_for(limits, Cfg())


def test_pids_default_values():
    assert cg._pids_default(None) == 2048 and cg._pids_default(Cfg()) == 2048
    assert cg._pids_default(Cfg(pids_limit=100)) == 100
    assert cg._pids_default(Cfg(pids_limit="max")) == 0 and cg._pids_default(Cfg(pids_limit=0)) == 0


def test_own_cgroup_probe(tmp_path, monkeypatch):
    proc = tmp_path / "cgroup"
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "cgroup.procs").write_text("")
    real_open = os.open

    def fake_open(path, flags, *a):
        return real_open(str(proc) if path == "/proc/self/cgroup" else path, flags, *a)

    monkeypatch.setattr(cg.os, "open", fake_open)
    monkeypatch.setattr(cg, "ROOT", str(root))
    proc.write_text("0::/a/b\n")
    assert cg._own_cgroup_writable() is (os.getuid() == 0 or os.access(root / "a/b/cgroup.procs", os.W_OK))
    assert cg.manager_for(Limits(), None) is not None
    proc.write_text("4:memory:/x\n0::/a/b\n")                    # hybrid: never
    assert cg._own_cgroup_writable() is False
    assert cg.manager_for(Limits(), None) is None
    proc.write_text("0::/nope\n")
    assert cg.manager_for(Limits(), None) is None


def test_hot_path_imports_only_os_and_is_fast():
    """No limit, no usable cgroup: one read and no imports beyond os (measured in a fresh interpreter)."""
    import subprocess
    import sys
    code = ("import sys, time; before = set(sys.modules)\n"
            "from runtime.spec import Limits; import runtime.cgroup as c\n"
            "t = time.perf_counter(); r = [c.manager_for(Limits(), None) for _ in range(200)]\n"
            "dt = (time.perf_counter() - t) / 200\n"
            "new = sorted(m for m in set(sys.modules) - before if not m.startswith('runtime'))\n"
            "print(new, dt, r[0] is None)\n")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {os.getcwd()!r})\n"
                          + code], capture_output=True, text=True, cwd=os.getcwd(), check=True).stdout
    new, dt, _none = out.rsplit(" ", 2)
    assert new == "[]", f"hot path imported {new}"
    assert float(dt) < 0.0005, f"manager_for took {float(dt) * 1e3:.3f} ms"


def test_write_error_names_path_value_errno(tmp_path):
    with pytest.raises(CgroupError) as e:
        CgroupFS().write(str(tmp_path / "nope" / "memory.max"), 16 * M)
    assert e.value.line() == f"cgroup write '16777216' to {tmp_path}/nope/memory.max: No such file or directory " \
                             "(ENOENT)"
    assert e.value.errno == errno.ENOENT


def test_parsers():
    assert discover.parse_proc_cgroup("4:memory:/p\n1:name=systemd:/\n0::/u/s\n") == ("/u/s", {"memory": "/p"})
    assert discover.common_ancestor("/sys/fs/cgroup/a/b", "/sys/fs/cgroup/a/c/d") == "/sys/fs/cgroup/a"
    assert discover.cgroup2_mount("41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n") == \
        "/sys/fs/cgroup/unified"
    assert discover.is_within("/a/b", "/a") and not discover.is_within("/ab", "/a")
