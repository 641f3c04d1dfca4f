"""pirun run -d / --name / --rm, ps: what a user sees, and that state never claims what the kernel denies."""
import concurrent.futures
import time

from conftest import ROOTFS, alive
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)


def test_detached_returns_once_started_and_ps_shows_it(pirun):
    t0 = time.monotonic()
    cid = pirun.detach("sleep", "300", name="web")
    assert time.monotonic() - t0 < 10
    r = pirun("ps")
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert len(rows) == 1 and rows[0].startswith(cid[:12]) and rows[0].endswith("web"), r.stdout
    assert " Up " in rows[0] and "sleep 300" in rows[0]
    [entry] = pirun.ps()
    assert entry["Id"] == cid and entry["Names"] == ["web"] and entry["State"] == "running"
    assert entry["Status"].startswith("Up ") and entry["Command"] == ["sleep", "300"]
    assert alive(entry["Pid"])
    with open(f"/proc/{entry['Pid']}/cmdline", "rb") as f:
        assert f.read() == b"sleep\x00300\x00"                       # the recorded PID is the command
    assert pirun("ps", "-q").stdout.split() == [cid[:12]]


def test_ps_hides_exited_without_a_and_shows_the_code(pirun):
    pirun.detach("sh", "-c", "exit 3", name="three")
    pirun.wait_status("three", "exited")
    assert pirun("ps").stdout.splitlines()[1:] == []
    rows = pirun("ps", "-a").stdout.splitlines()[1:]
    assert len(rows) == 1 and "Exited (3)" in rows[0] and " ago" in rows[0], rows
    [entry] = pirun.ps()
    assert entry["State"] == "exited" and entry["ExitCode"] == 3 and entry["Exited"] is True


def test_a_generated_name_when_none_is_given(pirun):
    cid = pirun.detach("sleep", "300")
    [entry] = pirun.ps()
    assert entry["Id"] == cid and entry["Names"][0].endswith(cid[:4])
    assert pirun("inspect", entry["Names"][0]).returncode == 0
    assert pirun("inspect", cid[:5]).returncode == 0                   # a unique ID prefix works too


def test_second_name_is_one_line_error(pirun):
    cid = pirun.detach("sleep", "300", name="web")
    r = pirun("run", "-d", "--name", "web", "--net", "none", "--rootfs", ROOTFS, "sleep", "300")
    line = one_line_error(r)
    assert 'the container name "web" is already in use by ' + cid[:12] in line
    assert [e["Id"] for e in pirun.ps()] == [cid]


def test_same_name_at_the_same_instant_only_one_wins(pirun):
    args = ("run", "-d", "--name", "race", "--net", "none", "--rootfs", ROOTFS, "sleep", "300")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: pirun(*args), range(8)))
    won = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert len(won) == 1, [(r.returncode, r.stderr) for r in results]
    for r in lost:
        assert 'the container name "race" is already in use' in one_line_error(r)
    assert [e["Names"] for e in pirun.ps()] == [["race"]]


def test_a_removed_name_can_be_used_again(pirun):
    pirun.detach("true", name="again")
    pirun.wait_status("again", "exited")
    assert pirun("rm", "again").returncode == 0
    pirun.detach("sleep", "300", name="again")
    assert pirun.status("again") == "running"


def test_bad_name_and_unknown_log_driver(pirun):
    one_line_error(pirun("run", "-d", "--name", "-x", "--net", "none", "--rootfs", ROOTFS, "true"))
    one_line_error(pirun("run", "-d", "--name", "a/b", "--net", "none", "--rootfs", ROOTFS, "true"))
    one_line_error(pirun("run", "-d", "--log-driver", "syslog", "--net", "none", "--rootfs", ROOTFS, "true"))
    assert pirun.ps() == [] and pirun.leftovers() == []


def test_a_command_that_cannot_start_leaves_no_record(pirun):
    r = pirun("run", "-d", "--name", "nope", "--net", "none", "--rootfs", ROOTFS, "/no/such/command")
    assert "command not found" in one_line_error(r, 127)
    r = pirun("run", "-d", "--name", "nope", "--net", "none", "--rootfs", ROOTFS, "/etc")
    assert "cannot execute" in one_line_error(r, 126)
    assert pirun.ps() == [] and pirun.leftovers() == []
    pirun.detach("sleep", "300", name="nope")                          # the name was not kept


def test_rm_option_removes_the_container_when_it_ends(pirun):
    pirun.detach("sh", "-c", "sleep 0.3", name="gone", extra=["--rm"])
    r = pirun("wait", "gone")
    assert r.returncode in (0, 125)                                     # it may be gone before wait looks
    deadline = time.monotonic() + 10
    while pirun.ps() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pirun.ps() == [] and pirun.leftovers() == []


def test_detached_container_has_no_terminal_and_its_own_session(pirun):
    pirun.detach("sh", "-c", "[ -t 0 ] || [ -t 1 ] && echo tty || echo notty; cat; echo eof", name="quiet")
    assert pirun("wait", "quiet").stdout == "0\n"
    assert pirun("logs", "quiet").stdout == "notty\neof\n"           # stdin is /dev/null, no terminal


def test_foreground_named_container_is_recorded_while_it_runs(pirun):
    proc = pirun.popen("run", "--name", "fg", "--net", "none", "--rootfs", ROOTFS, "sh", "-c",
                       "echo out; echo err >&2; read x; exit 5", stdin=-1)
    deadline = time.monotonic() + 10
    while True:
        entries = [e for e in pirun.ps() if e["State"] == "running"]
        if entries or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [e["Names"] for e in entries] == [["fg"]]
    r = pirun("exec", "fg", "hostname")
    assert (r.returncode, r.stdout) == (0, "myhost\n"), r.stderr
    logs = pirun("logs", "fg")
    assert "runs in the foreground" in one_line_error(logs)
    out, err = proc.communicate("go\n", timeout=20)
    assert proc.returncode == 5
    assert out == "out\n" and err == "err\n"                           # the caller's stdio, untouched
    [entry] = pirun.ps()
    assert entry["State"] == "exited" and entry["ExitCode"] == 5


def test_stop_ends_a_foreground_named_container(pirun):
    proc = pirun.popen("run", "--name", "svc", "--net", "none", "--rootfs", ROOTFS, "sleep", "300")
    deadline = time.monotonic() + 10
    while pirun("inspect", "-f", "{{.State.Status}}", "svc").stdout.strip() != "running":
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    r = pirun("stop", "-t", "5", "svc")
    assert (r.returncode, r.stdout) == (0, "svc\n"), r.stderr
    proc.communicate(timeout=10)
    assert proc.returncode == 143                                       # SIGTERM, as run.py reports it
    assert pirun.ps()[0]["ExitCode"] == 143


def test_plain_pirun_run_records_nothing(pirun):
    r = pirun("run", "--net", "none", "--rootfs", ROOTFS, "sh", "-c", "exit 4")
    assert r.returncode == 4
    assert pirun.ps() == [] and pirun.leftovers() == []


def test_replace_removes_the_container_of_that_name(pirun):
    """podman's --replace (what service units run): an old container of the name, running or exited, goes."""
    old = pirun.detach("sleep", "100", name="svc")
    new = pirun.detach("sleep", "100", name="svc", extra=["--replace"])
    assert [c["Id"] for c in pirun.ps("-a")] == [new], "the old container of the name is still there"
    assert old != new
    pirun("stop", "-t", "0", "svc", check=True)
    newer = pirun.detach("true", name="svc", extra=["--replace"])           # an exited one goes too
    assert [c["Id"] for c in pirun.ps("-a")] == [newer]
    r = pirun("run", "--replace", "--net", "none", "--rootfs", ROOTFS, "true")
    assert r.returncode == 125 and "--replace needs --name" in r.stderr, r.stderr
    pirun("rm", "-f", "svc")
