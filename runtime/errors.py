"""Error types: one per concern, one base. Only run.py's main catches them.

Every error renders as one line: ``<what failed>: <reason>`` and, when known, ``; fix: <how>``.
The exit code belongs to the error, not to the code that catches it. An error from a failed system call
carries its errno (`os_error`), also across the sync channel.
"""
import os

EXIT_RUNTIME = 125      # the runtime or the host failed (podman's convention)
EXIT_CANNOT_EXEC = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127    # the command does not exist


class PirunError(Exception):
    exit_code = EXIT_RUNTIME
    errno = None            # set when a system call failed

    def __init__(self, message, fix=None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def line(self):
        if self.fix:
            return f"{self.message}; fix: {self.fix}"
        return self.message


class SpecError(PirunError):
    """Bad command line, bad host configuration, missing rootfs: found before anything starts."""


class SetupError(PirunError):
    """A container setup step failed (namespaces, mounts, pivot_root, hostname, capabilities)."""


class IdMapError(PirunError):
    """Writing the user namespace's uid/gid maps failed."""


class CgroupError(PirunError):
    """A requested resource limit cannot be applied."""


class NetworkError(PirunError):
    """The network helper could not be started or configured."""


class ExecError(PirunError):
    """execve of the command failed: 127 when not found, 126 when it cannot be executed."""

    def __init__(self, message, fix=None, exit_code=EXIT_NOT_FOUND):
        super().__init__(message, fix)
        self.exit_code = exit_code


def os_error(step, obj, err, fix=None):
    """The SetupError of a failed system call: `<step> <object>: <strerror>`, with its errno."""
    where = f"{step} {obj}" if obj else step
    e = SetupError(f"{where}: {os.strerror(err)}", fix)
    e.errno = err
    return e
