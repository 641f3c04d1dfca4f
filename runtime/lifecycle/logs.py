"""A detached container's stdout and stderr, written by its monitor: a size-capped, rotated file (k8s-file) or
the systemd journal.

k8s-file (podman's default file format), one record a line:
    2026-12-03T08:30:00.123456789Z stdout F the line
`F` ends a line, `P` is a part of a longer one (a line longer than the read buffer, or the last bytes before
the container ended without a newline). The file is capped at `max-size` (--log-opt max-size=SIZE, default
1 MB): when the next record would pass it, ctr.log becomes ctr.log.1 (replacing the previous one) and a new
ctr.log starts, so a container never keeps more than twice max-size on disk (an SD card does not fill up).
`pirun logs` reads ctr.log.1 then ctr.log.

journald (--log-driver journald): each line is one datagram of the journal's native protocol on
/run/systemd/journal/socket ($PIRUN_JOURNAL_SOCKET overrides it), with MESSAGE, PRIORITY (6 stdout, 3 stderr)
and podman's tags CONTAINER_ID (12 hex), CONTAINER_ID_FULL, CONTAINER_NAME, CONTAINER_TAG, SYSLOG_IDENTIFIER
and IMAGE_NAME; CONTAINER_PARTIAL_MESSAGE=true for a part of a longer line.
"""
import os
import time

DEFAULT_MAX_SIZE = 1024 * 1024
MIN_MAX_SIZE = 4096
JOURNAL_SOCKET = "/run/systemd/journal/socket"
DRIVERS = ("k8s-file", "json-file", "journald", "none")


def parse_options(driver, opts):
    """(driver, max_size) from --log-driver and --log-opt values; SpecError for what we do not support."""
    from runtime.errors import SpecError
    driver = driver or "k8s-file"
    if driver not in DRIVERS:
        raise SpecError(f"--log-driver {driver}: unsupported", fix="use k8s-file, journald or none")
    if driver == "json-file":
        driver = "k8s-file"                     # podman's alias
    max_size = DEFAULT_MAX_SIZE
    for text in opts:
        key, eq, value = text.partition("=")
        if key == "max-size" and eq:
            from runtime.sizes import parse_size
            max_size = parse_size(value, "--log-opt max-size")
            if max_size < MIN_MAX_SIZE:
                raise SpecError(f"--log-opt max-size={value}: below {MIN_MAX_SIZE} bytes",
                                fix="give at least 4k")
        elif key == "tag" and eq:
            pass
        else:
            raise SpecError(f"--log-opt {text}: unsupported", fix="use max-size=SIZE or tag=TAG")
    return driver, max_size


def log_tag(opts):
    for text in opts:
        key, _, value = text.partition("=")
        if key == "tag":
            return value
    return None


def timestamp(t=None):
    t = time.time() if t is None else t
    secs = int(t)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{int((t - secs) * 1e9):09d}Z"


class Lines:
    """Splits a stream's bytes into lines; hands out complete lines and, when forced, the rest as a part."""

    def __init__(self):
        self.buf = b""

    def feed(self, data, limit=16384):
        self.buf += data
        out = []
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                break
            out.append((self.buf[:i], True))
            self.buf = self.buf[i + 1:]
        while len(self.buf) >= limit:               # a very long line: pass it on in parts
            out.append((self.buf[:limit], False))
            self.buf = self.buf[limit:]
        return out

    def flush(self):
        rest, self.buf = self.buf, b""
        return [(rest, False)] if rest else []


class FileLog:
    """k8s-file writer with rotation."""

    def __init__(self, path, max_size=DEFAULT_MAX_SIZE):
        self.path = path
        self.max_size = max_size
        self.lost = 0                               # records that could not be written (disk full)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size

    def write(self, stream, line, full):
        record = b"%s %s %s %s\n" % (timestamp().encode(), stream.encode(), b"F" if full else b"P", line)
        try:
            if self.size and self.size + len(record) > self.max_size:
                self.rotate()
            os.write(self.fd, record)
        except OSError:
            self.lost += 1                          # a full disk must not end the container: drop the line
            return
        self.size += len(record)

    def rotate(self):
        os.replace(self.path, self.path + ".1")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.close(self.fd)
        self.fd = fd
        self.size = 0

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def journal_fields(message, priority, cid, name, image, tag, partial):
    """One entry in the journal's native protocol: KEY=VALUE lines; a value with a newline is sent as KEY,
    newline, its length as 64-bit little endian, the value, newline."""
    import struct
    out = []
    ident = tag or cid[:12]
    for key, value in (("MESSAGE", message), ("PRIORITY", str(priority).encode()),
                       ("CONTAINER_ID", cid[:12].encode()), ("CONTAINER_ID_FULL", cid.encode()),
                       ("CONTAINER_NAME", name.encode()), ("CONTAINER_TAG", ident.encode()),
                       ("SYSLOG_IDENTIFIER", ident.encode()), ("IMAGE_NAME", (image or "").encode())):
        k = key.encode()
        if b"\n" in value:
            out.append(k + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            out.append(k + b"=" + value + b"\n")
    if partial:
        out.append(b"CONTAINER_PARTIAL_MESSAGE=true\n")
    return b"".join(out)


def journal_socket():
    return os.environ.get("PIRUN_JOURNAL_SOCKET") or JOURNAL_SOCKET


def check_journal():
    """--log-driver journald needs a journal to write to: checked before the container starts (a requested
    log that cannot be kept is an error, not lost lines)."""
    import _socket
    from runtime.errors import SpecError
    path = journal_socket()
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError as e:
        raise SpecError(f"--log-driver journald: {path}: {e.strerror}",
                        fix="run systemd-journald (systemd hosts), or use --log-driver k8s-file") from None
    finally:
        s.close()


class JournalLog:
    def __init__(self, cid, name, image, tag=None, path=None):
        import _socket
        self.addr = path or journal_socket()
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        self.meta = (cid, name, image, tag)
        self.lost = 0

    def write(self, stream, line, full):
        cid, name, image, tag = self.meta
        data = journal_fields(line, 6 if stream == "stdout" else 3, cid, name, image, tag, not full)
        try:
            self.sock.sendto(data, self.addr)
        except OSError:
            self.lost += 1                          # journald gone or full: the container goes on

    def close(self):
        self.sock.close()


def open_log(config):
    driver = config.get("log_driver")
    if driver == "journald":
        return JournalLog(config["id"], config["name"], config.get("image"), config.get("log_tag"))
    if driver == "none" or not config.get("log_path"):
        return None
    return FileLog(config["log_path"], config.get("log_max_size") or DEFAULT_MAX_SIZE)


def remove(path):
    for p in (path, path + ".1"):
        try:
            os.unlink(p)
        except OSError:
            pass
    try:
        os.rmdir(os.path.dirname(path))
    except OSError:
        pass


# --- reading (pirun logs) -------------------------------------------------------------------------------------
def parse_record(line):
    """(timestamp, stream, full, text) from one k8s-file line, or None."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    text = parts[3] if len(parts) == 4 else b""
    return parts[0], parts[1], parts[2] == b"F", text


def read_records(path):
    """Every record of the rotated file, then of the current one."""
    out = []
    for p in (path + ".1", path):
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for line in data.split(b"\n"):
            rec = parse_record(line) if line else None
            if rec:
                out.append(rec)
    return out


def render(records, timestamps):
    """Records back into the bytes the container wrote, split into (stream, bytes) chunks."""
    out = []
    for ts, stream, full, text in records:
        data = text + (b"\n" if full else b"")
        if timestamps:
            data = ts + b" " + data
        out.append((stream, data))
    return out
