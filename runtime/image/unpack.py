"""Unpack layer tarballs into the store, inside a user namespace with the user's full subordinate ID map.

Runs in the child of runtime.image.userns: root there, so files get the image's owners (an image's 1000:1000
is 1000:1000 in the container), setuid bits, hard links, symlinks and xattrs are kept. Device nodes cannot be
made rootless: they are skipped and counted (one notice). Whiteouts become what overlayfs reads: `.wh.NAME`
a 0/0 character device, `.wh..wh..opq` the `user.overlay.opaque` xattr (overlayfs with `userxattr`) and
`user.fuseoverlayfs.opaque` (fuse-overlayfs).

Hostile members cannot write outside the layer directory: every path is resolved one component at a time
with openat(O_NOFOLLOW | O_DIRECTORY) from the layer's root, so `..` is refused, an absolute name is taken
relative to the layer, a symlink is never followed (a member written "through" one is refused), and a hard
link's target must be a file already in the layer. The member count is capped.

Each layer is unpacked into `layers/.tmp-*`, its compressed digest and diff ID are computed on the same pass
and checked, and only then is the directory renamed to `layers/<diff ID hex>`: a layer directory exists
completely or not at all.
"""
import errno
import os
import stat

from runtime.errors import SetupError
from runtime.image.tree import remove_tree_at

MAX_MEMBERS = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_PREFIX = "SCHILY.xattr."
_KEPT_XATTRS = ("user.", "security.capability")
_CHUNK = 1 << 20


class LayerError(SetupError):
    """A layer that cannot be unpacked (hostile, corrupted, unsupported)."""


class _StreamError(Exception):
    """The compressed stream cannot be read (corrupted, truncated)."""


class _Hashing:
    """A file object that hashes (sha256) and counts what is read through it."""
    __slots__ = ("f", "h", "n")

    def __init__(self, f):
        import hashlib
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def read(self, size=-1):
        try:
            b = self.f.read(size)
        except _StreamError:
            raise
        except (OSError, EOFError, ValueError, Exception) as e:    # zlib.error, BadGzipFile, lzma...
            raise _StreamError(str(e)) from None
        self.h.update(b)
        self.n += len(b)
        return b

    def drain(self):
        while self.read(_CHUNK):
            pass

    def digest(self):
        return "sha256:" + self.h.hexdigest()


class _Slice:
    """`length` bytes of a file from `offset` (a blob inside an uncompressed archive); -1: to the end."""
    __slots__ = ("f", "left")

    def __init__(self, f, offset, length):
        f.seek(offset)
        self.f, self.left = f, length

    def read(self, size=-1):
        if self.left < 0:
            return self.f.read(size)
        if size < 0 or size > self.left:
            size = self.left
        b = self.f.read(size)
        self.left -= len(b)
        return b


class _Prefixed:
    """A stream whose first bytes were already read (to sniff the compression)."""
    __slots__ = ("head", "f")

    def __init__(self, head, f):
        self.head, self.f = head, f

    def read(self, size=-1):
        if self.head:
            if size < 0:
                b, self.head = self.head + self.f.read(), b""
                return b
            b, self.head = self.head[:size], self.head[size:]
            return b if len(b) == size else b + self.f.read(size - len(b))
        return self.f.read(size)


def _decompressor(raw, what):
    head = raw.read(6)
    raw = _Prefixed(head, raw)
    if head[:2] == b"\x1f\x8b":
        import gzip
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head[:4] == b"\x28\xb5\x2f\xfd":
        raise LayerError(f"{what}: zstd-compressed layers are not supported",
                         fix="save or push the image with gzip layers (podman push --compression-format gzip)")
    if head[:3] == b"BZh":
        import bz2
        return bz2.BZ2File(raw, mode="rb")
    if head[:6] == b"\xfd7zXZ\x00":
        import lzma
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _split(name, what, member):
    """Member name -> path components inside the layer; `..` is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{what}: member {member!r} points outside the layer ('..')",
                         fix="the image is broken or hostile: do not use it")
    return parts


class _Unpacker:
    def __init__(self, root_fd, what, user):
        self.root_fd = root_fd
        self.what = what
        self.user = user
        self.devices = 0
        self.dirs = []                    # (parts, mtime) set after all members
        self.cache_key = None
        self.cache_fd = None

    def close(self):
        if self.cache_fd is not None:
            os.close(self.cache_fd)
            self.cache_fd = self.cache_key = None

    def walk(self, parts, member, create=True):
        """A new fd of the directory `parts` inside the layer; never follows a symlink; creates missing
        directories (0755, root) when `create`."""
        fd = os.dup(self.root_fd)
        try:
            for comp in parts:
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise LayerError(f"{self.what}: member {member!r} is written through a symlink or a "
                                         f"non-directory ({comp!r})",
                                         fix="the image is broken or hostile: do not use it") from None
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def dir_fd(self, parts, member, create=True):
        """walk(), cached for the last directory asked (tar members come directory by directory)."""
        key = tuple(parts)
        if key != self.cache_key:
            fd = self.walk(parts, member, create)
            self.close()
            self.cache_key, self.cache_fd = key, fd
        return self.cache_fd

    def clear(self, dfd, name, keep_dir):
        """Remove what is at name (unless it is a directory and keep_dir); True if a directory stays."""
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            remove_tree_at(dfd, name)
        else:
            os.unlink(name, dir_fd=dfd)
        return False

    def owner(self, fd_or_name, uid, gid, dfd=None, member=""):
        try:
            if dfd is None:
                os.fchown(fd_or_name, uid, gid)
            else:
                os.chown(fd_or_name, uid, gid, dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            from runtime.image.userns import mapped_ids
            uids, gids = mapped_ids()
            n = min(sum(c for _, c in uids), sum(c for _, c in gids))
            need = max(uid, gid)
            raise LayerError(f"{self.what}: {member!r} is owned by {uid}:{gid}, outside the {n} user and group "
                             f"IDs mapped for you (0 to {n - 1})",
                             fix=f"give {self.user} more than {need} subordinate IDs (usermod --add-subuids "
                                 f"FIRST-LAST --add-subgids FIRST-LAST {self.user}; /etc/subuid, /etc/subgid), "
                                 f"or use an image whose files belong to IDs below {n}") from None

    def xattrs(self, target, ti):
        """The member's xattrs (user.* and file capabilities) on the open file `target`."""
        for key, value in (ti.pax_headers or {}).items():
            if key.startswith(_XATTR_PREFIX):
                name = key[len(_XATTR_PREFIX):]
                if name.startswith(_KEPT_XATTRS):
                    try:
                        os.setxattr(target, name, value.encode("utf-8", "surrogateescape"))
                    except OSError as e:
                        if e.errno not in (errno.ENOTSUP, errno.EPERM):
                            raise

    def member(self, tf, ti):
        parts = _split(ti.name, self.what, ti.name)
        if not parts:                                    # "./": the layer's root directory
            if ti.isdir():
                self.owner(self.root_fd, ti.uid, ti.gid, member="/")
                os.fchmod(self.root_fd, ti.mode & 0o7777)
            return
        base = parts[-1]
        dfd = self.dir_fd(parts[:-1], ti.name)
        if base.startswith(".wh."):
            if base == ".wh..wh..opq":
                os.setxattr(dfd, "user.overlay.opaque", b"y")
                os.setxattr(dfd, "user.fuseoverlayfs.opaque", b"y")
            elif not base.startswith(".wh..wh."):
                name = base[4:]
                if name in ("", ".", ".."):
                    raise LayerError(f"{self.what}: bad whiteout {ti.name!r}")
                self.clear(dfd, name, keep_dir=False)
                os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=dfd)
            return
        if ti.isdir():
            if not self.clear(dfd, base, keep_dir=True):
                os.mkdir(base, 0o700, dir_fd=dfd)
            fd = os.open(base, _DIR_FLAGS, dir_fd=dfd)
            try:
                self.owner(fd, ti.uid, ti.gid, member=ti.name)
                os.fchmod(fd, ti.mode & 0o7777)
                self.xattrs(fd, ti)
            finally:
                os.close(fd)
            self.dirs.append((parts, ti.mtime))
            return
        self.clear(dfd, base, keep_dir=False)
        if ti.isreg():
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dfd)
            try:
                src = tf.extractfile(ti)
                while True:
                    b = src.read(_CHUNK)
                    if not b:
                        break
                    while b:
                        b = b[os.write(fd, b):]
                self.owner(fd, ti.uid, ti.gid, member=ti.name)
                os.fchmod(fd, ti.mode & 0o7777)       # after chown, which clears setuid
                self.xattrs(fd, ti)
                os.utime(fd, (ti.mtime, ti.mtime))
            finally:
                os.close(fd)
        elif ti.issym():
            os.symlink(ti.linkname, base, dir_fd=dfd)
            self.owner(base, ti.uid, ti.gid, dfd=dfd, member=ti.name)
            os.utime(base, (ti.mtime, ti.mtime), dir_fd=dfd, follow_symlinks=False)
        elif ti.islnk():
            tparts = _split(ti.linkname, self.what, ti.linkname)
            if not tparts:
                raise LayerError(f"{self.what}: hard link {ti.name!r} to the layer's root")
            try:
                tfd = self.walk(tparts[:-1], ti.linkname, create=False)
            except (FileNotFoundError, NotADirectoryError, LayerError):
                tfd = None
            try:
                if tfd is None:
                    raise FileNotFoundError
                os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise LayerError(f"{self.what}: hard link {ti.name!r} points to {ti.linkname!r}, which is not "
                                 f"in the layer", fix="the image is broken or hostile: do not use it") from None
            finally:
                if tfd is not None:
                    os.close(tfd)
        elif ti.isfifo():
            os.mkfifo(base, ti.mode & 0o777, dir_fd=dfd)
            self.owner(base, ti.uid, ti.gid, dfd=dfd, member=ti.name)
        elif ti.ischr() or ti.isblk():
            self.devices += 1
        # other member types (GNU volume headers...) carry nothing to unpack

    def finish(self):
        for parts, mtime in reversed(self.dirs):
            try:
                fd = self.dir_fd(parts, "", create=False)
                os.utime(fd, (mtime, mtime))
            except OSError:
                pass
        self.close()


def unpack_one(layers_dir, blob, blob_digest, diff_id, user, lock=True):
    """Unpack one blob into layers_dir/<diff ID hex>; returns (diff_id, size, devices skipped). In the
    user-namespace child. `blob_digest`/`diff_id` None: not known beforehand (computed)."""
    import tarfile
    blob_path, offset, length = blob
    what = f"layer {(blob_digest or diff_id or blob_path)}"
    lock_fd = None
    if diff_id and lock:
        hexid = diff_id.split(":", 1)[1]
        lock_fd = os.open(f"{layers_dir}/{hexid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        import fcntl
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if os.path.isdir(f"{layers_dir}/{hexid}"):
            os.close(lock_fd)
            return diff_id, _size_of(f"{layers_dir}/{hexid}"), 0
    tmp = f".tmp-{os.getpid()}-{os.urandom(6).hex()}"
    os.mkdir(f"{layers_dir}/{tmp}", 0o700)
    try:
        os.mkdir(f"{layers_dir}/{tmp}/diff", 0o755)
        root_fd = os.open(f"{layers_dir}/{tmp}/diff", _DIR_FLAGS)
        u = _Unpacker(root_fd, what, user)
        try:
            with open(blob_path, "rb", buffering=_CHUNK) as f:
                raw = _Hashing(_Slice(f, offset, length))
                plain = _Hashing(_decompressor(raw, what))
                count = 0
                try:
                    with tarfile.open(fileobj=plain, mode="r|", bufsize=_CHUNK) as tf:
                        for ti in tf:
                            count += 1
                            if count > MAX_MEMBERS:
                                raise LayerError(f"{what}: more than {MAX_MEMBERS} members",
                                                 fix="the image is broken or hostile: do not use it")
                            u.member(tf, ti)
                    plain.drain()
                    raw.drain()
                except (tarfile.TarError, EOFError, _StreamError) as e:
                    if blob_digest and _rest_digest(raw) != blob_digest:
                        raise _mismatch(what, blob_digest) from None
                    raise LayerError(f"{what}: not a valid layer tarball ({e})",
                                     fix="the file is corrupted or not an image: save or pull it again") from None
                if blob_digest and raw.digest() != blob_digest:
                    raise _mismatch(what, blob_digest)
                got = plain.digest()
                if diff_id and got != diff_id:
                    raise LayerError(f"{what}: its content's digest {got} differs from the config's diff ID "
                                     f"{diff_id}", fix="the file is corrupted: save or pull the image again")
            u.finish()
        finally:
            u.close()
            os.close(root_fd)
        size = plain.n
        with open(f"{layers_dir}/{tmp}/size", "w") as f:
            f.write(f"{size}\n")
        with open(f"{layers_dir}/{tmp}/blob", "w") as f:       # lets a later pull skip downloading it
            f.write(f"{raw.digest()} {raw.n}\n")
        final = got.split(":", 1)[1]
        try:
            os.rename(f"{layers_dir}/{tmp}", f"{layers_dir}/{final}")
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            _remove(layers_dir, tmp)             # another pull unpacked the same layer first
        return got, size, u.devices
    except BaseException:
        _remove(layers_dir, tmp)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def _remove(parent, name):
    fd = os.open(parent, _DIR_FLAGS)
    try:
        remove_tree_at(fd, name)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rest_digest(raw):
    try:
        raw.drain()
    except _StreamError:
        pass
    return raw.digest()


def _mismatch(what, digest):
    return LayerError(f"{what}: digest mismatch: the blob's content does not hash to {digest}",
                      fix="the file is corrupted: pull or save the image again")


def _size_of(layer):
    try:
        with open(f"{layer}/size") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def unpack_all(layers_dir, jobs, user):
    """In the user-namespace child: jobs = [((path, offset, length), blob_digest|None, diff_id|None)]. Returns
    lines
    'diff_id size devices', and syncs the filesystem before returning (the caller commits a record next)."""
    out = []
    for blob_path, blob_digest, diff_id in jobs:
        got, size, devices = unpack_one(layers_dir, blob_path, blob_digest, diff_id, user)
        out.append(f"{got} {size} {devices}")
    fd = os.open(layers_dir, _DIR_FLAGS)
    try:
        from runtime import libc
        libc.syncfs(fd)
    finally:
        os.close(fd)
    return "\n".join(out)


def stream_worker(layers_dir, cmd_fd, user):
    """In a user-namespace child: unpack the blobs whose paths arrive as lines on cmd_fd (a pull's layers,
    while they download), each checked against the digest its file is named by; returns lines
    'blob_digest diff_id size devices' once cmd_fd is closed, after syncing the filesystem."""
    out, buf = [], b""
    while True:
        b = os.read(cmd_fd, 4096)
        if not b:
            break
        buf += b
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            path = line.decode(errors="surrogateescape")
            digest = "sha256:" + os.path.basename(path)
            got, size, devices = unpack_one(layers_dir, (path, 0, -1), digest, None, user, lock=False)
            out.append(f"{digest} {got} {size} {devices}")
    fd = os.open(layers_dir, _DIR_FLAGS)
    try:
        from runtime import libc
        libc.syncfs(fd)
    finally:
        os.close(fd)
    return "\n".join(out)


class StreamPool:
    """Unpack a pull's layers as they arrive, in `workers` user-namespace children (parallel on several
    cores). feed(path) hands one blob over; finish() returns {blob digest: (diff_id, size, devices)}."""

    def __init__(self, layers_dir, user, workers=2):
        self.workers = []
        self.pending = []
        try:
            for _ in range(workers):
                r, w = os.pipe2(os.O_CLOEXEC)
                from runtime.image import userns
                keep = [w] + [x[1] for x in self.workers]
                child = userns.start(stream_worker, layers_dir, r, user, keep=keep)
                os.close(r)
                self.workers.append([child, w, 0])
        except BaseException:
            self.abort()
            raise

    def feed(self, path, size):
        worker = min(self.workers, key=lambda x: x[2])
        worker[2] += size
        os.write(worker[1], path.encode(errors="surrogateescape") + b"\n")

    def failed(self):
        """A worker that ended early (an error): raise its error."""
        import select
        fds = [w[0].res_r for w in self.workers if w[1] is not None]
        r, _, _ = select.select(fds, [], [], 0)
        for w in self.workers:
            if w[0].res_r in r:
                os.close(w[1])
                w[1] = None
                w[0].wait()          # raises the worker's error

    def finish(self):
        done = {}
        try:
            for w in self.workers:
                if w[1] is not None:
                    os.close(w[1])
                    w[1] = None
            for w in self.workers:
                for line in (w[0].wait() or "").splitlines():
                    digest, diff_id, size, devices = line.split()
                    done[digest] = (diff_id, int(size), int(devices))
        except BaseException:
            self.abort()
            raise
        return done

    def abort(self):
        for w in self.workers:
            if w[1] is not None:
                os.close(w[1])
                w[1] = None
            w[0].kill()


def remove_paths(paths):
    """In the user-namespace child: rm -rf each path (files of every mapped ID)."""
    for p in paths:
        parent, _, name = p.rstrip("/").rpartition("/")
        try:
            _remove(parent or "/", name)
        except OSError:
            pass
    return ""
