"""The one module that talks to libc through ctypes (Python 3.11 has no os.unshare, mount, pivot_root, prctl).

libc is loaded on first use. Every call goes through `check`, which turns a -1 into a SetupError naming the
step, the object and the errno: `mount proc on /proc: Operation not permitted`.
"""
import os

from runtime.errors import SetupError, os_error

# <sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <asm/unistd.h>, per architecture
_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
    "armv7l": {"pivot_root": 218, "capset": 185},
    "armv6l": {"pivot_root": 218, "capset": 185},
}

_lib = None
_ct = None


def _load():
    global _lib, _ct
    if _lib is None:
        import ctypes
        lib = ctypes.CDLL(None, use_errno=True)
        c_char_p, c_int, c_ulong, c_long = ctypes.c_char_p, ctypes.c_int, ctypes.c_ulong, ctypes.c_long
        lib.unshare.argtypes = [c_int]
        lib.unshare.restype = c_int
        lib.mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
        lib.mount.restype = c_int
        lib.umount2.argtypes = [c_char_p, c_int]
        lib.umount2.restype = c_int
        lib.prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]
        lib.prctl.restype = c_int
        lib.syscall.restype = c_long
        _ct = ctypes
        _lib = lib
    return _lib


def _b(s):
    return None if s is None else os.fsencode(s)


def check(ret, step, obj=None, fix=None):
    """Raise SetupError for a failed libc call (ret == -1), naming the step, the object and the errno."""
    if ret == -1:
        raise os_error(step, obj, _ct.get_errno(), fix)
    return ret


def unshare(flags, fix=None):
    lib = _load()
    return check(lib.unshare(flags), "unshare", _flag_names(flags), fix)


def mount(source, target, fstype, flags, data=None, step=None, shown=None):
    """mount(2); `shown` names the target in errors when `target` is a /proc/self/fd/N path."""
    lib = _load()
    ret = lib.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    return check(ret, step or f"mount {fstype or source} on", shown or target)


def umount2(target, flags, step="umount"):
    lib = _load()
    return check(lib.umount2(_b(target), flags), step, target)


def prctl(option, arg2=0, arg3=0, arg4=0, arg5=0, step="prctl"):
    lib = _load()
    return check(lib.prctl(option, arg2, arg3, arg4, arg5), step)


def set_name(name):
    """PR_SET_NAME: so that ps shows which stage a process is. Best effort."""
    lib = _load()
    buf = _ct.create_string_buffer(name.encode()[:15])
    lib.prctl(PR_SET_NAME, _ct.addressof(buf), 0, 0, 0)


def _nr(name):
    nrs = _SYSCALLS.get(os.uname().machine)
    if nrs is None:
        raise SetupError(f"{name}: unsupported architecture {os.uname().machine}")
    return nrs[name]


def pivot_root(new_root, put_old):
    lib = _load()
    ret = lib.syscall(_ct.c_long(_nr("pivot_root")), _ct.c_char_p(_b(new_root)), _ct.c_char_p(_b(put_old)))
    return check(ret, "pivot_root", new_root)


def capset(effective, permitted, inheritable):
    """capset(2) with _LINUX_CAPABILITY_VERSION_3 (64-bit sets as two 32-bit words)."""
    lib = _load()
    ct = _ct

    class Header(ct.Structure):
        _fields_ = [("version", ct.c_uint32), ("pid", ct.c_int)]

    class Data(ct.Structure):
        _fields_ = [("effective", ct.c_uint32), ("permitted", ct.c_uint32), ("inheritable", ct.c_uint32)]

    hdr = Header(0x20080522, 0)
    data = (Data * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    ret = lib.syscall(ct.c_long(_nr("capset")), ct.byref(hdr), data)
    return check(ret, "capset")


_FLAG_NAMES = ((CLONE_NEWUSER, "user"), (CLONE_NEWNS, "mount"), (CLONE_NEWPID, "pid"), (CLONE_NEWUTS, "uts"),
               (CLONE_NEWIPC, "ipc"), (CLONE_NEWNET, "net"), (CLONE_NEWCGROUP, "cgroup"))


def _flag_names(flags):
    return "+".join(name for bit, name in _FLAG_NAMES if flags & bit) + " namespaces"


# --- setns (pirun exec: runtime.lifecycle.exec; the port forwarder: runtime.net.forward) --------------------------
def setns(fd, nstype, obj=None, step="setns"):
    """setns(2): join the namespace open at `fd`; with a pidfd, several CLONE_NEW* flags enter those namespaces of
    the process at once (Linux 5.8+), the user namespace first."""
    lib = _load()
    lib.setns.argtypes = [_ct.c_int, _ct.c_int]
    lib.setns.restype = _ct.c_int
    return check(lib.setns(fd, nstype), step, obj or _flag_names(nstype))


def syncfs(fd, step="syncfs"):
    """syncfs(2): write the filesystem holding `fd` to disk (an image store commits after its layers)."""
    lib = _load()
    return check(lib.syncfs(fd), step)
