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

    def pump(self, chan, on_message):
        """Copy bytes until on_message(...) returns True for a message from the channel; then drain the
        terminal's remaining output."""
        master = self.master
        watch = [master, chan.fileno(), 0]
        done = False
        while not done:
            try:
                readable, _, _ = select.select(watch, [], [])
            except InterruptedError:
                continue
            if 0 in readable:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if data:
                    _write_all(master, data)
                else:
                    watch.remove(0)                     # caller's stdin closed: keep showing output
            if master in readable and not self._copy_out():
                watch.remove(master)
            if chan.fileno() in readable:
                done = on_message()
        while self.master is not None:              # drain what the command wrote before it ended
            r, _, _ = select.select([master], [], [], 0.05)
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
