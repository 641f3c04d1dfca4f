"""The launcher's end of the container's pseudo-terminal: raw mode on the caller's terminal, bytes copied both
ways, window size followed (SIGWINCH), the caller's terminal restored on every exit path."""
import os
import select


class Terminal:
    def __init__(self, master):
        self.master = master
        self.saved = None

    def start(self):
        if os.isatty(0):
            import termios
            import tty
            self.saved = termios.tcgetattr(0)
            tty.setraw(0, termios.TCSANOW)
        self.resize()

    def resize(self):
        import fcntl
        import termios
        for fd in (0, 1, 2):
            if os.isatty(fd):
                try:
                    ws = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                    fcntl.ioctl(self.master, termios.TIOCSWINSZ, ws)
                except OSError:
                    pass
                return

    def restore(self):
        if self.saved is not None:
            import termios
            try:
                termios.tcsetattr(0, termios.TCSADRAIN, self.saved)
            except OSError:
                pass
            self.saved = None
        if self.master is not None:
            os.close(self.master)
            self.master = None

    def handlers(self):
        """fd -> handler for the launcher's event loop: the caller's keys into the pseudo-terminal, the
        command's output onto the caller's stdout. A handler returns False when its fd is done."""
        return {0: self._copy_in, self.master: lambda _fd: self._copy_out()}

    def _copy_in(self, _fd):
        try:
            data = os.read(0, 65536)
        except OSError:
            data = b""
        if not data:
            return False                            # caller's stdin closed: keep showing output
        _write_all(self.master, data)
        return True

    def drain(self):
        """After the command ended: copy what it wrote before it ended."""
        while self.master is not None:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r or not self._copy_out():
                break

    def _copy_out(self):
        try:
            data = os.read(self.master, 65536)
        except OSError:                                 # EIO: every slave fd is closed
            return False
        if not data:
            return False
        _write_all(1, data)
        return True


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]
