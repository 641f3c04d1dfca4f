"""pirun logs: stdout and stderr as the container wrote them, --tail, --timestamps, -f, rotation; journald."""
import os
import socket
import threading
import time

from conftest import ROOTFS
from lc_helpers import one_line_error, pirun  # noqa: F401  (fixture)


def test_stdout_and_stderr_keep_their_streams(pirun):
    pirun.detach("sh", "-c", "echo one; echo two >&2; printf 'no newline'", name="l")
    pirun("wait", "l")
    r = pirun("logs", "l")
    assert (r.returncode, r.stdout, r.stderr) == (0, "one\nno newline", "two\n")


def test_tail_and_timestamps(pirun):
    pirun.detach("sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done", name="t")
    pirun("wait", "t")
    assert pirun("logs", "--tail", "2", "t").stdout == "line4\nline5\n"
    assert pirun("logs", "--tail", "0", "t").stdout == ""
    assert pirun("logs", "--tail", "-1", "t").stdout.count("\n") == 5
    lines = pirun("logs", "--timestamps", "--tail", "1", "t").stdout.splitlines()
    ts, text = lines[0].split(" ", 1)
    assert text == "line5"
    assert len(ts) == 30 and ts[4] == "-" and ts[10] == "T" and ts.endswith("Z"), ts   # RFC 3339, ns
    one_line_error(pirun("logs", "--tail", "x", "t"))
    one_line_error(pirun("logs", "nosuch"))


def test_follow_prints_until_the_container_ends(pirun):
    pirun.detach("sh", "-c", "echo first; sleep 1; echo second; sleep 0.5; exit 0", name="f")
    t0 = time.monotonic()
    r = pirun("logs", "-f", "f", timeout=30)
    assert r.returncode == 0 and r.stdout == "first\nsecond\n", r
    assert time.monotonic() - t0 > 0.8


def test_log_is_capped_and_rotated(pirun):
    line = "x" * 95
    cid = pirun.detach("sh", "-c", f"i=0; while [ $i -lt 400 ]; do echo $i-{line}; i=$((i+1)); done",
                       name="rot", extra=["--log-opt", "max-size=8k"])
    pirun("wait", "rot")
    log = pirun.root / "logs" / cid / "ctr.log"
    assert log.exists() and (log.parent / "ctr.log.1").exists()
    for p in (log, log.parent / "ctr.log.1"):
        assert p.stat().st_size <= 8192, (p, p.stat().st_size)
    out = pirun("logs", "rot").stdout.splitlines()
    numbers = [int(x.split("-")[0]) for x in out]
    assert numbers[-1] == 399 and numbers == list(range(numbers[0], 400)), numbers[:5]   # contiguous tail
    assert 400 - numbers[0] < 200                             # at most two files' worth is kept


def test_follow_across_a_rotation(pirun):
    pirun.detach("sh", "-c", "sleep 1; i=0; while [ $i -lt 300 ]; do echo n$i-0123456789012345678901234567890123"
                 "4567890123456789; i=$((i+1)); [ $((i % 50)) = 0 ] && sleep 0.2; done", name="fr",
                 extra=["--log-opt", "max-size=4k"])
    r = pirun("logs", "-f", "fr", timeout=60)
    got = [int(x.split("-")[0][1:]) for x in r.stdout.splitlines()]
    assert got == list(range(300)), (got[:5], len(got))


def test_journald_driver_writes_the_native_protocol(pirun, shared_tmp):
    path = str(shared_tmp / "journal.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    os.chmod(path, 0o666)
    srv.settimeout(10)
    got = []

    def collect():
        try:
            while len(got) < 3:
                got.append(srv.recv(65536))
        except OSError:
            pass
    t = threading.Thread(target=collect)
    t.start()
    cid = pirun.detach("sh", "-c", "echo hello; echo oops >&2; printf 'no newline'", name="jd",
                       extra=["--log-driver", "journald"], env={"PIRUN_JOURNAL_SOCKET": path})
    t.join(15)
    srv.close()
    assert len(got) >= 2, got
    entries = [_parse(d) for d in got]
    by_msg = {e["MESSAGE"]: e for e in entries}
    hello, oops = by_msg[b"hello"], by_msg[b"oops"]
    assert hello["PRIORITY"] == b"6" and oops["PRIORITY"] == b"3"
    assert by_msg[b"no newline"]["CONTAINER_PARTIAL_MESSAGE"] == b"true"
    for e in (hello, oops):
        assert e["CONTAINER_NAME"] == b"jd"
        assert e["CONTAINER_ID"] == cid[:12].encode() and e["CONTAINER_ID_FULL"] == cid.encode()
        assert e["SYSLOG_IDENTIFIER"] == cid[:12].encode()
    pirun("wait", "jd")
    line = one_line_error(pirun("logs", "jd"))
    assert "journalctl CONTAINER_NAME=jd" in line
    assert not (pirun.root / "logs" / cid).exists()


def test_journald_driver_without_a_journal_is_an_error(pirun, shared_tmp):
    r = pirun("run", "-d", "--log-driver", "journald", "--net", "none", "--rootfs", ROOTFS, "true",
              env={"PIRUN_JOURNAL_SOCKET": str(shared_tmp / "no-journal.sock")})
    line = one_line_error(r)
    assert "--log-driver journald" in line and "No such file" in line
    assert pirun.ps() == [] and pirun.leftovers() == []


def _parse(datagram):
    """The journal's native protocol: KEY=VALUE\\n, or KEY\\n<le64 length><value>\\n."""
    fields, i = {}, 0
    while i < len(datagram):
        nl = datagram.index(b"\n", i)
        line = datagram[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            fields[k.decode()] = v
            i = nl + 1
        else:
            n = int.from_bytes(datagram[nl + 1:nl + 9], "little")
            fields[line.decode()] = datagram[nl + 9:nl + 9 + n]
            assert datagram[nl + 9 + n:nl + 10 + n] == b"\n"
            i = nl + 10 + n
    return fields


def test_journald_value_with_a_newline_uses_the_binary_form():
    from runtime.lifecycle.logs import journal_fields
    data = journal_fields(b"a\nb", 6, "f" * 64, "n", "img", None, True)
    f = _parse(data)
    assert f["MESSAGE"] == b"a\nb" and f["CONTAINER_PARTIAL_MESSAGE"] == b"true" and f["IMAGE_NAME"] == b"img"
    assert b"MESSAGE\n" + (3).to_bytes(8, "little") + b"a\nb\n" in data


def test_log_driver_none_keeps_nothing(pirun):
    cid = pirun.detach("echo", "hi", name="quiet", extra=["--log-driver", "none"])
    pirun("wait", "quiet")
    assert "keeps no log" in one_line_error(pirun("logs", "quiet"))
    assert not (pirun.root / "logs" / cid).exists()
