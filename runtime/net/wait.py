"""Waiting for a helper process: one mechanism, a blocking poll(2) over the helper's pidfd and, while it
starts, its ready fd. No sleeps, no polling loops; EINTR is retried by Python with the remaining timeout
(PEP 475).

    wait_for(pidfd, fd, timeout)   ready data, b"" (helper gone or fd at EOF), None (timeout)
    reap(pid, timeout)             wait for the exit (the same poll on a pidfd), SIGKILL after timeout
    end(pid)                       SIGKILL, reap only if already gone (see its doc: the tap teardown)
"""
import os
import select
import _signal

READY_TIMEOUT = 10.0        # seconds a helper may take to say "ready" (a loaded Pi 3 needs < 0.5 s)
STOP_TIMEOUT = 2.0          # reap(): seconds a failed helper gets to exit before SIGKILL


def pidfd_of(pid):
    """A pidfd of child `pid` (not yet reaped, so the PID cannot have been reused), or None (kernel < 5.3)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def wait_for(pidfd, fd=None, timeout=READY_TIMEOUT):
    """Block until `fd` is readable (data or EOF), or the process behind `pidfd` exits, or `timeout` s pass.
    Returns the bytes read from fd (b"" on EOF or when the process exited without writing), None on timeout.
    Either of pidfd and fd may be None."""
    p = select.poll()
    if fd is not None:
        p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    if pidfd is not None:
        p.register(pidfd, select.POLLIN)
    events = p.poll(int(timeout * 1000))
    if not events:
        return None
    if fd is not None and any(f == fd for f, _ in events):
        return os.read(fd, 512)
    return b""


def exited(pid):
    """Non-blocking: the wait status if child `pid` has exited (reaping it), else None; -1 if not our child."""
    try:
        wpid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return status if wpid == pid else None


def _kill(pid):
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(pid, timeout=STOP_TIMEOUT, pidfd=None):
    """Wait up to `timeout` s for child `pid` to exit (wait_for on its pidfd), then SIGKILL and wait.
    Returns the wait status, or None if pid was not our child any more."""
    status = exited(pid)
    if status == -1:
        return None
    if status is not None:
        return status
    own = pidfd is None
    if own:
        pidfd = pidfd_of(pid)
    try:
        if pidfd is None or wait_for(pidfd, None, timeout) is None:
            _kill(pid)
    finally:
        if own and pidfd is not None:
            os.close(pidfd)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def end(pid):
    """Stop a helper without waiting for the kernel to finish its exit: SIGKILL (it cannot be caught, blocked
    or ignored, so the helper is certain to die), then reap it if it is already gone. Waiting would cost P
    about 20 ms on every container: closing the tap fd unregisters the device (RCU grace periods) inside the
    helper's exit_group, measured 17-38 ms here. An unreaped zombie goes to init or the nearest subreaper when
    P exits. Returns the wait status if reaped, else None."""
    _kill(pid)
    status = exited(pid)
    return None if status == -1 else status


def describe_status(status):
    if status is None:
        return "exited"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with status {os.WEXITSTATUS(status)}"
