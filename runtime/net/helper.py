"""The base of the backends served by a helper process that P starts (slirp4netns, pasta): the host's tun
device check, waiting for "ready", watching the helper, reporting its death once, and ending it.

Hot path: only `os` and what the modules below import (`select`, `_signal`); everything runs in P.
"""
import os

from runtime.errors import NetworkError
from runtime.net import NetBackend
from runtime.net.spawn import read_log
from runtime.net.wait import READY_TIMEOUT, describe_status, end, exited, pidfd_of, reap, wait_for


def check_tun():
    """slirp4netns and pasta open /dev/net/tun inside the container's namespaces, but the permission check is
    on the host's device node: mode 0600 root (no udev rule) makes both fail with EACCES for a user."""
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        try:
            mode = oct(os.stat("/dev/net/tun").st_mode & 0o7777)[2:]
            why = f"Permission denied (mode {mode})"
            fix = "chmod 0666 /dev/net/tun (Debian's udev default, 50-udev-default.rules) or use --net none"
        except OSError as e:
            why = e.strerror
            fix = "load the tun module (modprobe tun) or use --net none"
        raise NetworkError(f"open /dev/net/tun: {why}", fix=fix)


class HelperBackend(NetBackend):
    TOOL = None

    def __init__(self, spec):
        super().__init__(spec)
        self._path = None
        self._pid = None
        self._pidfd = None
        self._log = None
        self._reported = False

    def _started(self, pid):
        """Record the helper just spawned, with a pidfd taken before anything could reap it."""
        self._pid = pid
        self._pidfd = pidfd_of(pid)

    def _wait_ready(self, ready_r, pid, expect=None):
        """Block until the helper reports ready on `ready_r` (returns what it wrote, which must be `expect` if
        given); on an early exit, anything else or a timeout, end it and raise NetworkError with its status
        and its last stderr lines."""
        try:
            got = wait_for(self._pidfd, ready_r, READY_TIMEOUT)
        except BaseException:
            self._stop(wait=True)
            raise
        if got and (expect is None or got == expect):
            return got
        status = reap(self._pid, 0.5, self._pidfd)
        self._pid = None
        log = read_log(self._log)
        self._stop(wait=True)
        if got is None:
            raise NetworkError(f"{self.TOOL}: network not ready after {READY_TIMEOUT:g} s",
                               fix="check the host's load; see `run.py --check`")
        raise NetworkError(f"{self.TOOL} for PID {pid}: {describe_status(status)}"
                           + (f": {log}" if log else ""))

    def watch_fds(self):
        """The helper's pidfd: readable when it exits, so the launcher can call poll() at once."""
        return (self._pidfd,) if self._pidfd is not None and self._pid is not None else ()

    def poll(self):
        if self._pid is None or self._reported:
            return None
        status = exited(self._pid)
        if status is None:
            return None
        self._reported = True
        self._pid = None
        log = read_log(self._log) if self._log is not None else ""
        return (f"{self.TOOL} {describe_status(status if status != -1 else None)}: the container has no "
                f"network any more" + (f" ({log})" if log else ""))

    def stop(self):
        self._stop(wait=False)

    def _stop(self, wait):
        if self._pid is not None:
            if wait:                        # failure paths: leave not even a zombie
                reap(self._pid, 0, self._pidfd)
            else:                           # certain death, without waiting for the tap teardown
                end(self._pid)
            self._pid = None
        if self._log is not None:
            os.close(self._log)
            self._log = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
