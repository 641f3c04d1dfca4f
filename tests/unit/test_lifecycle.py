"""The lifecycle package's pure parts: records, names, log records and rotation, ps's wording, signals."""
import os

import pytest

from runtime.cmd import Context
from runtime.cmd.containers import _template, human_duration, parse_signal, status_text
from runtime.errors import SpecError
from runtime.lifecycle import logs, state


@pytest.fixture
def ctx(tmp_path):
    return Context(root=str(tmp_path / "root"), runroot=str(tmp_path / "run"))


def test_human_duration_is_go_units():
    cases = {0.4: "Less than a second", 1: "1 second", 59: "59 seconds", 60: "About a minute",
             119: "About a minute", 180: "3 minutes", 3599: "59 minutes", 3600: "About an hour",
             7200: "2 hours", 47 * 3600: "47 hours", 3 * 86400: "3 days", 20 * 86400: "2 weeks",
             90 * 86400: "3 months", 800 * 86400: "2 years"}
    for seconds, text in cases.items():
        assert human_duration(seconds) == text, seconds


def test_record_is_replaced_atomically_and_junk_reads_as_none(tmp_path):
    p = str(tmp_path / "state")
    state.write_record(p, {"status": "running", "pid": 5})
    assert state.read_record(p) == {"status": "running", "pid": 5}
    assert os.listdir(tmp_path) == ["state"]                      # no temp file left
    (tmp_path / "state").write_bytes(b"\x00garbage")
    assert state.read_record(p) is None


def test_create_claims_the_name_and_holds_the_lock(ctx):
    cid = state.new_id()
    c, lock = state.create(ctx, cid, "web", {"command": ["true"]})
    assert c.running and c.status == "created" and c.name == "web"
    with pytest.raises(SpecError, match='"web" is already in use by ' + cid[:12]):
        state.create(ctx, state.new_id(), "web", {})
    assert state.all_ids(ctx) == [cid]                            # the loser left nothing
    assert state.lookup(ctx, "web").id == cid and state.lookup(ctx, cid[:6]).id == cid
    c.update(status="running", pid=os.getpid(), pid_start=state.start_time(os.getpid()))
    assert state.Container(ctx, cid).pid() == os.getpid()
    os.close(lock)                                                 # the monitor is gone
    c = state.Container(ctx, cid)
    assert not c.running and c.status == "exited" and c.exit_code == 137 and c.pid() is None
    state.remove(ctx, c)
    with pytest.raises(state.NoSuchContainer):
        state.lookup(ctx, "web")
    c2, lock2 = state.create(ctx, state.new_id(), "web", {})      # the name is free again
    os.close(lock2)


def test_a_dangling_name_is_reclaimed(ctx):
    os.makedirs(state.names_dir(ctx))
    os.symlink("f" * 64, f"{state.names_dir(ctx)}/web")           # its record was removed by a killed rm
    c, lock = state.create(ctx, state.new_id(), "web", {})
    assert state.lookup(ctx, "web").id == c.id
    os.close(lock)


def test_a_recycled_pid_is_not_the_container(ctx):
    c, lock = state.create(ctx, state.new_id(), "x", {})
    c.update(status="running", pid=os.getpid(), pid_start=12345)   # same PID, another start time
    c = state.Container(ctx, c.id)
    assert c.pid() is None and c.pidfd() is None
    os.close(lock)


def test_sweep_removes_half_made_and_half_removed_directories(ctx):
    base = state.containers_dir(ctx)
    os.makedirs(f"{base}/.new-{'a' * 64}-999999999")
    os.makedirs(f"{base}/.rm-{'b' * 64}-999999999")
    os.makedirs(f"{base}/.new-{'c' * 64}-{os.getpid()}")           # its maker is alive: kept
    os.makedirs(f"{ctx.root}/logs/{'d' * 64}")                     # a log without a record
    state.sweep(ctx)
    assert os.listdir(base) == [f".new-{'c' * 64}-{os.getpid()}"]
    assert os.listdir(f"{ctx.root}/logs") == []


def test_names_are_checked():
    for bad in ("", "-x", "a/b", "a b", "é", "x" * 129):
        with pytest.raises(SpecError):
            state.valid_name(bad)
    assert state.valid_name("web-1.a_b") == "web-1.a_b"


def test_lines_split_and_flush():
    lines = logs.Lines()
    assert lines.feed(b"a\nb") == [(b"a", True)]
    assert lines.feed(b"c\n\n") == [(b"bc", True), (b"", True)]
    assert lines.feed(b"x" * 10, limit=4) == [(b"xxxx", False), (b"xxxx", False)]
    assert lines.flush() == [(b"xx", False)] and lines.flush() == []


def test_file_log_rotates_at_the_cap(tmp_path):
    path = str(tmp_path / "ctr.log")
    log = logs.FileLog(path, max_size=4096)
    for i in range(200):
        log.write("stdout" if i % 2 else "stderr", b"%d-%s" % (i, b"y" * 40), True)
    log.write("stdout", b"tail", False)
    log.close()
    assert os.path.getsize(path) <= 4096 and os.path.getsize(path + ".1") <= 4096
    recs = logs.read_records(path)
    assert recs[-1][1:] == (b"stdout", False, b"tail")
    nums = [int(r[3].split(b"-")[0]) for r in recs[:-1]]
    assert nums == list(range(nums[0], 200))
    assert logs.render(recs[-2:], False) == [(b"stdout", b"199-" + b"y" * 40 + b"\n"), (b"stdout", b"tail")]


def test_log_options():
    assert logs.parse_options(None, ()) == ("k8s-file", logs.DEFAULT_MAX_SIZE)
    assert logs.parse_options("json-file", ("max-size=10mb",)) == ("k8s-file", 10 << 20)
    assert logs.parse_options("journald", ("tag=web",))[0] == "journald"
    for driver, opts in (("syslog", ()), (None, ("max-size=1",)), (None, ("compress=true",))):
        with pytest.raises(SpecError):
            logs.parse_options(driver, opts)


def test_timestamp_is_rfc3339_with_nanoseconds():
    assert logs.timestamp(1796286960.5) == "2026-12-03T08:36:00.500000000Z"


def test_parse_signal():
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("15") == 15
    assert parse_signal("kill") == 9
    for bad in ("NOPE", "0", "99", "SIG_DFL", "-1"):
        with pytest.raises(SpecError):
            parse_signal(bad)


def test_inspect_template():
    data = {"State": {"Status": "running", "Running": True}, "Name": "w", "Args": ["a"]}
    assert _template("{{.State.Status}} {{ .Name }} {{.State.Running}} {{.Args}}", data) == 'running w true ["a"]'
    for bad in ("{{.Nope}}", "{{.State", "{{printf}}"):
        with pytest.raises(SpecError):
            _template(bad, data)


def test_status_text(ctx):
    c, lock = state.create(ctx, state.new_id(), "s", {})
    assert status_text(state.Container(ctx, c.id), 0) == "Created"
    c.update(status="running", started_at=100.0)
    assert status_text(state.Container(ctx, c.id), 280.0) == "Up 3 minutes"
    c.update(status="exited", exit_code=0, finished_at=200.0)
    os.close(lock)
    assert status_text(state.Container(ctx, c.id), 320.0) == "Exited (0) 2 minutes ago"


def test_a_failing_log_write_drops_the_line_and_goes_on(tmp_path):
    log = logs.FileLog(str(tmp_path / "ctr.log"))
    os.close(log.fd)
    log.fd = os.open("/dev/full", os.O_WRONLY)                  # ENOSPC on every write
    log.write("stdout", b"lost", True)
    assert log.lost == 1
    log.close()


def test_state_directory_must_be_private(tmp_path):
    mine = tmp_path / "run"
    mine.mkdir(mode=0o700)
    state.check_private(str(mine))
    mine.chmod(0o777)
    with pytest.raises(SpecError, match="not private"):
        state.check_private(str(mine))
    mine.chmod(0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(SpecError, match="symbolic link"):
        state.check_private(str(link))
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)                               # made by another user first (we run as root)
    (other / "run").mkdir()
    with pytest.raises(SpecError, match="not private"):
        state.check_private(str(other / "run"))
