"""run.py from a terminal: an interactive shell with its own terminal and job control; Ctrl-C reaches the
foreground job inside, not run.py; the window size follows."""
import fcntl
import os
import select
import struct
import subprocess
import termios
import time

from conftest import descendants, run_args, user_env, user_kwargs


class Pty:
    def __init__(self, args, net="none"):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        self.proc = subprocess.Popen(run_args(args, net=net), stdin=slave, stdout=slave, stderr=slave, env=user_env({"TERM": "xterm"}),
                                     cwd="/", start_new_session=True, **user_kwargs())
        os.close(slave)
        self.buf = b""

    def send(self, data):
        os.write(self.master, data)

    def expect(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        want = text.encode()
        while want not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {text!r}; screen so far: {self.buf[-500:]!r}"
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"terminal closed before {text!r}; screen: {self.buf[-500:]!r}")
                self.buf += chunk
        i = self.buf.index(want) + len(want)
        before, self.buf = self.buf[:i], self.buf[i:]
        return before

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def test_interactive_shell(rootfs):
    t = Pty(["/bin/sh"])
    try:
        t.expect("# ")
        t.send(b"hostname\n")
        t.expect("myhost")
        t.expect("# ")
        t.send(b"tty; stty size\n")
        t.expect("/dev/pts/0")
        t.expect("33 101")
        t.expect("# ")
        t.send(b"sleep 100\n")
        time.sleep(0.3)
        t.send(b"\x03")                       # Ctrl-C: SIGINT to the foreground job inside
        t.expect("# ")
        t.send(b"echo shell-survived-$((40+2))\n")
        t.expect("shell-survived-42")
        assert t.proc.poll() is None
        t.send(b"exit 3\n")
        assert t.proc.wait(timeout=10) == 3
    finally:
        t.close()


def test_window_size_follows(rootfs):
    t = Pty(["/bin/sh"])
    try:
        t.expect("# ")
        fcntl.ioctl(t.master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        t.proc.send_signal(28)                # the terminal sends SIGWINCH to run.py's process group
        time.sleep(0.2)
        t.send(b"stty size\n")
        t.expect("40 120")
        t.send(b"exit\n")
        assert t.proc.wait(timeout=10) == 0
    finally:
        t.close()


def test_job_control(rootfs):
    t = Pty(["/bin/sh"])
    try:
        t.expect("# ")
        t.send(b"sleep 100\n")
        time.sleep(0.3)
        t.send(b"\x1a")                       # Ctrl-Z stops the foreground job
        t.expect("# ")
        t.send(b"jobs\n")
        t.expect("Stopped")
        t.send(b"fg\n")                      # resumed in the foreground, Ctrl-C still reaches it
        time.sleep(0.3)
        t.send(b"\x03")
        t.expect("# ")
        t.send(b"exit 0\n")
        assert t.proc.wait(timeout=10) == 0
    finally:
        t.close()


def test_dead_network_helper_is_reported_on_the_terminal(rootfs):
    """With a terminal too, run.py watches the helper's pidfd: its death is one notice, the shell goes on."""
    t = Pty(["/bin/sh"], net="slirp4netns")
    try:
        t.expect("# ")
        helpers = [p for p in descendants(t.proc.pid) if _comm(p) == "slirp4netns"]
        assert len(helpers) == 1, helpers
        os.kill(helpers[0], 9)
        t.expect("slirp4netns was killed by signal 9: the container has no network any more")
        t.send(b"echo still-$((6*7))\n")
        t.expect("still-42")
        t.send(b"exit 5\n")
        assert t.proc.wait(timeout=10) == 5
    finally:
        t.close()


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_pipes_pass_through_untouched(rootfs):
    from conftest import run
    data = "".join(f"line {i}\n" for i in range(20000))
    r = run(["cat"], input=data)
    assert r.returncode == 0
    assert r.stdout == data
    r = run(["sh", "-c", "echo out; echo err >&2; [ -t 0 ] && echo tty || echo notty"])
    assert r.stdout == "out\nnotty\n"
    assert r.stderr == "err\n"
