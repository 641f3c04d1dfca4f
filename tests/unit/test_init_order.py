"""The container side's order of operations, without privileges: Init applies whole `steps.plan(...)`s and
runs up to exec against a recording double of the syscall surface (runtime.syscalls).

The filesystem queries Init makes (lstat, O_PATH lookups in the rootfs, statvfs) are real: the rootfs is a
small directory tree in tmp_path, and after the (recorded, not performed) pivot_root, paths such as /proc/sys
are the test machine's own.
"""
import errno
import inspect
import os
from pathlib import Path

import pytest

from recording_syscalls import RecordingSyscalls
from runtime import caps, steps, sync
from runtime.errors import SetupError
from runtime.init import Init
from runtime.libc import (MNT_DETACH, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT, MS_SLAVE, PR_CAP_AMBIENT,
                          PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS)
from runtime.net import backend_for
from runtime.spec import NetSpec, Spec, Volume
from runtime.syscalls import Syscalls

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rootfs(tmp_path):
    for d in ("bin", "proc", "dev", "sys", "etc", "mnt", "data"):
        (tmp_path / d).mkdir()
    for f in ("hostname", "hosts", "resolv.conf"):
        (tmp_path / "etc" / f).write_text("from the image\n")
    return str(tmp_path)


def make_spec(rootfs, **kw):
    base = dict(argv=("/bin/true",), rootfs=rootfs, caps=tuple(caps.NUMBER[c] for c in caps.DEFAULT),
                net=NetSpec(mode="none"), env=(("PATH", "/bin"),))
    base.update(kw)
    return Spec(**base)


def apply_plan(spec, fail=None):
    """Init.apply_step over the whole plan; returns the recording."""
    rec = RecordingSyscalls(fail)
    init = Init(spec, steps.plan(spec, backend_for(spec.net)), None, syscalls=rec)
    try:
        for step in init.plan:
            init.apply_step(step)
    finally:
        if init.root_fd is not None:
            os.close(init.root_fd)
    return rec


def index(rec, *prefix):
    """Position of the first call that starts with `prefix`; fails when there is none."""
    for i, call in enumerate(rec.calls):
        if call[:len(prefix)] == prefix:
            return i
    pytest.fail(f"no call {prefix!r} in {rec.calls!r}")


def indices(rec, pred):
    return [i for i, call in enumerate(rec.calls) if pred(call)]


def is_ro_remount(call, target):
    return (call[0] == "mount" and call[2] == target
            and call[4] & (MS_REMOUNT | MS_BIND | MS_RDONLY) == MS_REMOUNT | MS_BIND | MS_RDONLY)


def test_double_has_the_real_surface():
    """The double is only worth its tests while it takes exactly the real calls and arguments."""
    def surface(cls):
        return {n: list(inspect.signature(getattr(cls, n)).parameters) for n in dir(cls)
                if not n.startswith("_") and callable(getattr(cls, n))}
    real = surface(Syscalls)
    double = surface(RecordingSyscalls)
    double.pop("names")
    for params in double.values():
        params.remove("self")
    assert double == real


def etc_src(rec, name):
    """The path a generated /etc file was written to (in the /dev tmpfs, through the fd MountDev took)."""
    paths = [c[1] for c in rec.calls if c[0] == "write_new" and c[1].endswith(f"/.pirun-{name}")]
    assert len(paths) == 1, paths
    return paths[0]


def test_default_plan_order(rootfs):
    spec = make_spec(rootfs)
    rec = apply_plan(spec)
    rslave = index(rec, "mount", None, "/", None, MS_REC | MS_SLAVE)
    bind_root = index(rec, "mount", rootfs, rootfs, None, MS_BIND | MS_REC)
    proc = index(rec, "mount", "proc", f"{rootfs}/proc", "proc")
    dev = index(rec, "mount", "tmpfs", f"{rootfs}/dev", "tmpfs")
    sys_ = index(rec, "mount", "sysfs", f"{rootfs}/sys", "sysfs")
    pivot = index(rec, "pivot_root", ".", ".")
    assert rslave == 0 and rslave < bind_root < proc < dev < sys_ < pivot
    # chdir into the rootfs, pivot, detach the old root, chdir to the new /
    assert rec.calls[pivot - 1] == ("chdir", rootfs)
    assert rec.calls[pivot + 1] == ("umount2", ".", MNT_DETACH)
    assert rec.calls[pivot + 2] == ("chdir", "/")
    # /dev is filled after its tmpfs and before the pivot
    for name in steps.DEVICES:
        assert dev < index(rec, "mount", f"/dev/{name}", f"{rootfs}/dev/{name}") < pivot
    assert dev < index(rec, "mount", "devpts", f"{rootfs}/dev/pts") < pivot
    assert index(rec, "mkdir", f"{rootfs}/dev/pts") < index(rec, "mount", "devpts")
    assert dev < index(rec, "symlink", "pts/ptmx", f"{rootfs}/dev/ptmx") < pivot
    # each generated /etc file: written into the /dev tmpfs through its fd (never through the path, which a
    # volume may cover), bound over /etc/<name>, unlinked; all before the pivot
    for name in ("hostname", "hosts", "resolv.conf"):
        src = etc_src(rec, name)
        assert src.startswith("/proc/self/fd/"), src
        write, bind, unlink = (index(rec, "write_new", src), index(rec, "mount", src, f"/etc/{name}"),
                               index(rec, "unlink", src))
        assert dev < write < bind < unlink < pivot
    assert rec.calls[index(rec, "write_new", etc_src(rec, "hostname"))][2] == "myhost\n"
    # after the pivot: the sysctl before /proc/sys turns read-only, masks, read-only paths, hostname, lo
    sysctl = index(rec, "write_existing", "/proc/sys/net/ipv4/ping_group_range", "0 0")
    ro_proc_sys = indices(rec, lambda c: is_ro_remount(c, "/proc/sys"))
    masks = indices(rec, lambda c: c[0] == "mount" and c[2] in steps.MASKED_PATHS)
    hostname = index(rec, "sethostname", "myhost")
    lo = index(rec, "loopback_up")
    assert ro_proc_sys and masks
    assert pivot < sysctl < index(rec, "mount", "/proc/sys", "/proc/sys") < ro_proc_sys[0]
    assert pivot < masks[0] and masks[-1] < hostname < lo == len(rec.calls) - 1
    assert {rec.calls[i][2] for i in masks} == {p for p in steps.MASKED_PATHS if os.path.lexists(p)}
    assert not indices(rec, lambda c: is_ro_remount(c, "/")), "the rootfs stays writable without --read-only"


def test_read_only_rootfs_is_remounted_after_pivot_and_generated_files(rootfs):
    rec = apply_plan(make_spec(rootfs, read_only=True))
    ro_root = indices(rec, lambda c: is_ro_remount(c, "/"))
    assert len(ro_root) == 1
    assert rec.calls[ro_root[0]][4] & MS_REC == 0, "only / itself: /dev and the /etc files stay writable"
    assert index(rec, "mount", etc_src(rec, "resolv.conf")) < index(rec, "pivot_root") < ro_root[0]
    assert ro_root[0] < index(rec, "sethostname")


def test_volumes_are_bound_before_pivot_and_read_only_ones_remounted(rootfs):
    spec = make_spec(rootfs, volumes=(Volume(host="/h1", target="/mnt"),
                                      Volume(host="/h2", target="/data", read_only=True)))
    rec = apply_plan(spec)
    mnt = index(rec, "mount", "/h1", "/mnt", None, MS_BIND | MS_REC)
    data = index(rec, "mount", "/h2", "/data", None, MS_BIND | MS_REC)
    pivot = index(rec, "pivot_root")
    etc = index(rec, "write_new", etc_src(rec, "hostname"))
    assert index(rec, "mount", "sysfs") < mnt < data < etc < pivot
    assert is_ro_remount(rec.calls[data + 1], "/data")
    assert not indices(rec, lambda c: is_ro_remount(c, "/mnt"))


def test_host_network_binds_sys_and_leaves_lo_and_sysctls_alone(rootfs):
    def no_sysfs(call):         # as without a network namespace of our own
        return errno.EPERM if call[:2] == ("mount", "sysfs") else None
    rec = apply_plan(make_spec(rootfs, net=NetSpec(mode="host")), fail=no_sysfs)
    sysfs = index(rec, "mount", "sysfs")
    assert rec.calls[sysfs + 1] == ("mount", "/sys", f"{rootfs}/sys", None, MS_BIND | MS_REC, None)
    assert is_ro_remount(rec.calls[sysfs + 2], f"{rootfs}/sys")
    assert sysfs + 2 < index(rec, "pivot_root")
    assert "loopback_up" not in rec.names() and "write_existing" not in rec.names()
    assert rec.calls[-1] == ("sethostname", "myhost")


class TappedChannel:
    """The container side's end of a real channel; what Init sends and waits for lands in the recording too."""

    def __init__(self, chan, calls):
        self.chan, self.calls = chan, calls

    def send(self, kind, *fields, fds=()):
        self.calls.append(("chan send", kind))
        self.chan.send(kind, *fields, fds=fds)

    def expect(self, kind, stage):
        self.calls.append(("chan expect", kind))
        return self.chan.expect(kind, stage)

    def send_error(self, exc, step=None):
        return self.chan.send_error(exc, step)

    def fileno(self):
        return self.chan.fileno()


def run_init(spec, fail=None, programs=None, go=True):
    """Init.run() to its (recorded) exec or exit; returns the recording and what the launcher received."""
    rec = RecordingSyscalls(fail, programs)
    parent, child = sync.Channel.pair()
    try:
        if go:
            parent.send(sync.GO)
        init = Init(spec, steps.plan(spec, backend_for(spec.net)), TappedChannel(child, rec.calls), syscalls=rec)
        init.run()
        if init.root_fd is not None:
            os.close(init.root_fd)
        child.close()
        received = []
        while True:
            kind, fields, fds = parent.recv()
            if kind is None:
                break
            for fd in fds:
                os.close(fd)
            received.append((kind, fields, len(fds)))
        return rec, received
    finally:
        parent.close()


def test_run_drops_capabilities_then_no_new_privs_then_seccomp_then_exec(rootfs):
    spec = make_spec(rootfs, workdir="/mnt")
    rec, received = run_init(spec)
    assert received == [(sync.SETUP, [], 0)]
    assert rec.calls[:3] == [("set_name", "pirun-init"), ("reset_signals",), ("setsid",)]
    kept = set(spec.caps)
    drops = indices(rec, lambda c: c[:2] == ("prctl", PR_CAPBSET_DROP))
    assert {rec.calls[i][2] for i in drops} == set(range(caps.last_cap() + 1)) - kept
    ambient = index(rec, "prctl", PR_CAP_AMBIENT)
    mask = caps.mask(caps.DEFAULT)
    capset = index(rec, "capset", mask, mask, 0)
    nnp = index(rec, "prctl", PR_SET_NO_NEW_PRIVS, 1)
    seccomp = index(rec, "install_seccomp")
    execve = index(rec, "execve", "/bin/true", ("/bin/true",))
    setup, go = index(rec, "chan send", sync.SETUP), index(rec, "chan expect", sync.GO)
    assert index(rec, "loopback_up") < setup < go < index(rec, "chdir", "/mnt") < index(rec, "close_fds") < drops[0]
    assert drops[-1] < ambient < capset < nnp < seccomp < execve == len(rec.calls) - 1


def test_run_without_seccomp_installs_none(rootfs):
    rec, _ = run_init(make_spec(rootfs, seccomp=False))
    assert "install_seccomp" not in rec.names()
    assert index(rec, "prctl", PR_SET_NO_NEW_PRIVS) == index(rec, "execve") - 1


def test_run_with_tty_passes_the_pty_and_attaches_it_after_go(rootfs):
    rec, received = run_init(make_spec(rootfs, tty=True, workdir="/mnt"))
    assert received == [(sync.SETUP, [], 1)]      # the master fd travels with SETUP
    assert index(rec, "loopback_up") < index(rec, "open_pty") < index(rec, "chan send", sync.SETUP) \
        < index(rec, "chan expect", sync.GO) < index(rec, "attach_terminal") < index(rec, "chdir", "/mnt") \
        < index(rec, "prctl")


def test_run_searches_path_and_reports_not_found(rootfs):
    spec = make_spec(rootfs, argv=("true",), env=(("PATH", "/usr/bin:/bin"),))
    rec, _ = run_init(spec, programs={"/bin/true"})
    assert [c[1] for c in rec.calls if c[0] == "execve"] == ["/usr/bin/true", "/bin/true"]
    rec, received = run_init(spec, programs=set())
    assert rec.calls[-1] == ("exit", 127)
    assert received[-1][0] == sync.ERROR and received[-1][1][:3] == ["ExecError", "127",
                                                                      "true: command not found in the container"]


def test_failed_step_stops_before_pivot_and_reaches_the_launcher_with_its_errno(rootfs):
    def pts_exists(call):
        return errno.EEXIST if call[:2] == ("mkdir", f"{rootfs}/dev/pts") else None
    rec, received = run_init(make_spec(rootfs), fail=pts_exists, go=False)
    assert rec.calls[-1] == ("exit", 125)
    assert "pivot_root" not in rec.names() and "execve" not in rec.names()
    kind, fields, _ = received[-1]
    assert kind == sync.ERROR
    e = sync.error_from_fields(fields)
    assert isinstance(e, SetupError) and e.errno == errno.EEXIST
    assert e.line() == f"mkdir {rootfs}/dev/pts: File exists"


def test_raw_oserror_of_a_step_is_named_after_the_step(tmp_path):
    """A call outside the surface (here the O_PATH open of the bound rootfs) fails with a bare OSError: the
    launcher still gets the step, the object and the errno."""
    not_a_dir = tmp_path / "rootfs"
    not_a_dir.write_text("")
    rec, received = run_init(make_spec(str(not_a_dir)), go=False)
    assert rec.calls[-1] == ("exit", 125)
    e = sync.error_from_fields(received[-1][1])
    assert e.line() == f"bind rootfs {not_a_dir}: Not a directory" and e.errno == errno.ENOTDIR


def test_everything_imported_after_pivot_root_is_preloaded():
    """After pivot_root the host's Python library is gone: every import inside a function of the container
    side must name a module that init._preload (or the module itself) has already loaded."""
    import ast
    import subprocess
    import sys
    late = set()
    for mod in ("init", "syscalls"):
        tree = ast.parse((REPO / "runtime" / f"{mod}.py").read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import):
                        late.update(a.name for a in node.names)
                    elif isinstance(node, ast.ImportFrom):
                        late.update(f"{node.module}.{a.name}" for a in node.names)
    assert {"termios", "runtime.caps", "_socket"} <= late        # the walk finds them
    code = ("import sys\nfrom runtime import init\nfrom runtime.spec import Overlay, Spec\n"
            "init._preload(Spec(argv=('x',), rootfs='/', caps=(), tty=True, seccomp=True,\n"
            "                   overlay=Overlay(lowers=('/l',))))\n"
            f"print(sorted(m for m in {sorted(late)!r} if m not in sys.modules))\n")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(REPO)!r})\n" + code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported only after pivot_root: {out.strip()}"
