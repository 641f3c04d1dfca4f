"""pirun exec: a new process in every namespace of a running container, with PID 1's privileges."""
import fcntl
import os
import select
import struct
import subprocess
import termios
import time
import urllib.request

from conftest import user_env, user_kwargs
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)

NAMESPACES = ("user", "mnt", "pid", "uts", "ipc", "net", "cgroup")


def test_exec_joins_every_namespace_of_the_container(pirun):
    pirun.detach("sh", "-c", "echo inside > /dev/shm/mark; exec sleep 300", name="e",
                 extra=["--hostname", "box"])
    pid = pirun.inspect("e")["State"]["Pid"]
    script = ("for n in " + " ".join(NAMESPACES) + "; do [ $(readlink /proc/1/ns/$n) = $(readlink /proc/self/ns/$n) ]"
              " || echo differs:$n; done; hostname; cat /dev/shm/mark; ps -o pid,comm | grep -w sleep")
    r = pirun("exec", "e", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:2] == ["box", "inside"], r.stdout
    assert lines[2].split() == ["1", "sleep"], r.stdout
    assert "differs" not in r.stdout
    assert os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_exec_has_pid_1s_capabilities_no_new_privs_and_seccomp(pirun):
    pirun.detach("sleep", "300", name="c", extra=["--cap-drop", "CHOWN"])
    fields = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters")
    r = pirun("exec", "c", "sh", "-c", "grep -E '^(" + "|".join(fields) + "):' /proc/1/status; echo --; "
              "grep -E '^(" + "|".join(fields) + "):' /proc/self/status")
    pid1, mine = r.stdout.split("--\n")
    assert pid1.split() == mine.split(), r.stdout
    assert "NoNewPrivs:\t1" in mine and "Seccomp:\t2" in mine
    assert pirun("exec", "c", "chown", "1:1", "/tmp").returncode != 0       # CHOWN is dropped for exec too
    r = pirun("exec", "c", "unshare", "-U", "true")
    assert r.returncode != 0                                # the seccomp filter refuses a nested namespace


def test_exec_exit_codes(pirun):
    pirun.detach("sleep", "300", name="x")
    assert pirun("exec", "x", "sh", "-c", "exit 4").returncode == 4
    assert "command not found" in one_line_error(pirun("exec", "x", "/no/such"), 127)
    assert "cannot execute" in one_line_error(pirun("exec", "x", "/etc"), 126)
    assert pirun("exec", "x", "sh", "-c", "kill -TERM $$").returncode == 143
    one_line_error(pirun("exec", "nosuch", "true"))
    pirun("stop", "x")
    assert "running containers" in one_line_error(pirun("exec", "x", "true"))


def test_exec_env_workdir_user(pirun):
    pirun.detach("sleep", "300", name="o", extra=["-e", "FROM_RUN=1"])
    r = pirun("exec", "-e", "A=b", "-e", "FROM_RUN=2", "-w", "/tmp", "o", "sh", "-c", "echo $A $FROM_RUN; pwd; id -u")
    assert r.stdout == "b 2\n/tmp\n0\n", r.stderr
    r = pirun("exec", "-u", "1000:1000", "o", "sh", "-c", "id -u; id -g; grep CapEff /proc/self/status")
    assert r.stdout.splitlines()[:2] == ["1000", "1000"], r.stderr
    assert r.stdout.splitlines()[2].split()[1] == "0000000000000000"     # no capabilities as a user
    r = pirun("exec", "-u", "nobody", "o", "id", "-un")
    assert r.stdout == "nobody\n", r.stderr
    one_line_error(pirun("exec", "-u", "nosuchuser", "o", "true"))
    one_line_error(pirun("exec", "-w", "/no/such/dir", "o", "true"))
    one_line_error(pirun("exec", "-w", "relative", "o", "true"))


def test_exec_stdin_only_with_i(pirun):
    pirun.detach("sleep", "300", name="in")
    assert pirun("exec", "-i", "in", "cat", input="piped\n").stdout == "piped\n"
    assert pirun("exec", "in", "cat", input="piped\n").stdout == ""      # without -i stdin is /dev/null
    r = pirun("exec", "in", "sh", "-c", "[ -t 0 ] || [ -t 1 ] && echo tty || echo notty")
    assert r.stdout == "notty\n"


def test_exec_with_a_terminal(pirun):
    pirun.detach("sleep", "300", name="tt")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    proc = subprocess.Popen(pirun.argv("exec", "-it", "tt", "/bin/sh"), stdin=slave, stdout=slave, stderr=slave,
                            env=user_env({"TERM": "xterm"}), cwd="/", start_new_session=True, **user_kwargs())
    os.close(slave)
    buf = b""

    def expect(text, timeout=10):
        nonlocal buf
        deadline = time.monotonic() + timeout
        while text.encode() not in buf:
            left = deadline - time.monotonic()
            assert left > 0, f"waiting for {text!r}: {buf[-300:]!r}"
            if select.select([master], [], [], left)[0]:
                try:
                    buf += os.read(master, 4096)
                except OSError:
                    break
        i = buf.index(text.encode()) + len(text)
        buf = buf[i:]
    try:
        expect("# ")
        os.write(master, b"tty; stty size; echo $TERM\n")
        expect("/dev/pts/")
        expect("30 90")
        expect("xterm")
        os.write(master, b"sleep 100\n")
        time.sleep(0.3)
        os.write(master, b"\x03")                            # Ctrl-C reaches the foreground job inside
        expect("# ")
        os.write(master, b"exit 6\n")
        assert proc.wait(timeout=10) == 6
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert pirun.status("tt") == "running"                  # the container goes on


def test_exec_reaches_a_server_in_the_container_with_a_published_port(pirun):
    from net_helpers import free_port
    port = free_port()
    pirun.detach("sh", "-c", "mkdir -p /dev/shm/www && echo served-by-httpd > /dev/shm/www/index.html && "
                 "exec httpd -f -p 8080 -h /dev/shm/www", name="web", net="slirp4netns",
                 extra=["-p", f"127.0.0.1:{port}:8080"])
    deadline = time.monotonic() + 10
    while True:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert body == b"served-by-httpd\n"                     # from the host through the published port
    r = pirun("exec", "web", "sh", "-c", "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 8080")
    assert r.returncode == 0 and "served-by-httpd" in r.stdout, r    # from inside: the same network


def test_kill_9_of_pirun_exec_takes_its_process_along(pirun):
    pirun.detach("sleep", "300", name="k")
    proc = pirun.popen("exec", "k", "sh", "-c", "echo started; exec sleep 299")
    assert proc.stdout.readline() == "started\n"
    from conftest import wait_for
    sleepers = wait_for(lambda: [p for p in _pids_named("sleep") if _cmdline(p) == b"sleep\x00299\x00"],
                        what="the exec'd sleep")                   # sh execs it right after the echo
    assert len(sleepers) == 1
    proc.kill()
    proc.communicate()
    from lc_helpers import reap_all
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{sleepers[0]}") and _state(sleepers[0]) != "Z":
        assert time.monotonic() < deadline, "the exec'd process outlived pirun exec"
        time.sleep(0.02)
    reap_all()                                              # we are its subreaper (lc_helpers)
    assert pirun.status("k") == "running"


def _pids_named(name):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/comm") as f:
                    if f.read().strip() == name:
                        out.append(int(e))
            except OSError:
                pass
    return out


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
