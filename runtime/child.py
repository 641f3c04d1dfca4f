"""Process I, between the launcher and the container's PID 1.

Forked by the launcher; dies with it (PR_SET_PDEATHSIG). Unshares the user namespace and lets the launcher write
the ID maps and place it in the cgroup; then unshares mount, UTS, IPC, network, cgroup and PID namespaces and
forks C, PID 1 of the new PID namespace, which dies with I. I waits for C and reports how it ended.
"""
import os
import _signal

from runtime import libc, sync
from runtime.libc import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                          CLONE_NEWUTS)

USERNS_FIX = ("allow unprivileged user namespaces: sysctl kernel.unprivileged_userns_clone=1 (Debian) or "
              "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu), as the pirun_prereqs role does")


def intermediate(spec, plan, chan, launcher_pid, unshare_net):
    """Runs in I; never returns."""
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
        if os.getppid() != launcher_pid:         # the launcher died before prctl took effect
            os._exit(125)
        libc.set_name("pirun-ns")
        # Keys typed at the caller's terminal (Ctrl-C, Ctrl-\) are the launcher's to forward, not I's to die of.
        for sig in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU):
            _signal.signal(sig, _signal.SIG_IGN)
        libc.unshare(CLONE_NEWUSER, fix=USERNS_FIX)
        chan.send(sync.USERNS)
        if spec.seccomp:        # the filter is built at import: here, while the launcher writes the ID maps
            from runtime import seccomp  # noqa: F401
        chan.expect(sync.MAPPED, "wait for the ID maps")
        try:
            os.setgroups([])                     # drop the caller's supplementary groups where allowed
        except OSError:
            pass
        remove = spec.overlay.remove if spec.overlay is not None else None
        if remove is not None:
            from runtime.image.overlay import remove_layer_at      # imported before C's pivot_root
        flags = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP | CLONE_NEWPID
        if unshare_net:
            flags |= CLONE_NEWNET
        libc.unshare(flags)
        # C must not speak on the channel before I has announced it (CHILD before SETUP): it waits for one
        # byte on this pipe, which I writes after sending CHILD.
        hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
        # I holds the write end of `life` until it dies: C reads EOF there once I is gone (a change of user
        # clears C's parent-death signal; init re-arms it and then looks here).
        life_r, life_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            os.close(life_w)
            if os.read(hold_r, 1) != b"G":       # EOF: I died before announcing us
                os._exit(125)
            os.close(hold_r)
            _container(spec, plan, chan, life_r)
        os.close(hold_r)
        os.close(life_r)
        chan.send(sync.CHILD, pid)
        os.write(hold_w, b"G")
        os.close(hold_w)
    except BaseException as e:                   # noqa: BLE001 - reported to the launcher
        os._exit(chan.send_error(e, "create the namespaces"))
    # From here on only C reads the channel; I only reports C's end.
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(125)
    if remove is not None:
        # An unnamed container's writable layer goes with it: I is root of the user namespace, the only
        # place where files of every mapped ID can be removed, and the launcher is waiting for the status.
        remove_layer_at(*remove)
    chan.send_status(status)
    os._exit(0)


def _container(spec, plan, chan, parent_fd):
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
    except BaseException as e:               # noqa: BLE001
        os._exit(chan.send_error(e, "start the container"))
    from runtime.init import Init
    Init(spec, plan, chan, parent_fd=parent_fd).run()
