"""Where the daemon's lines come from: log files followed for months.

Each followed path is read from its last position up to its last whole line. The
position is known by the file's identity (device, inode, and a fingerprint of its
first bytes, so neither a reused inode nor a leading blank line fools it), and is
saved by the caller with the offences read up to it. The follower copes with
rotation by rename (the old file is finished before the new one is read),
`copytruncate`, deletion and re-creation, a file that does not exist yet, a
symlink whose target changes, and a last line still being written (it waits for
the newline). inotify wakes it where available; otherwise it polls. Journals
(journal.py) are followed beside the files, in the same loop: their readers'
pipes wake it as the files' inotify does.
"""
from __future__ import annotations

import glob
import hashlib
import os
import select
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .journal import JournalFollower, JournalSpec
from .sources import READ_ERRORS, Source, open_source

FP_LEN = 1024          # bytes of a file's head that identify it
DRAIN_IDLE = 5.0       # a rotated-away file is read until it has been quiet this long (late writers)
READ_MAX = 1 << 20     # bytes read from one file per round, so one busy file cannot starve the rest


@dataclass
class Spec:
    path: Path
    mta: str | None = None              # the rule pack to read it with; None: by program name


@dataclass
class Chunk:
    path: str                           # the followed path
    name: str                           # the file actually read (a rotated copy while catching up)
    mta: str | None
    data: bytes                         # whole lines
    lines_before: int                   # lines of that file before `data`


@dataclass
class _Drain:
    """A file rotated away, still read for what its writer adds before reopening the new one."""
    f: BinaryIO
    name: str
    offset: int
    lines: int
    skipping: bool
    until: float


@dataclass
class _File:
    spec: Spec
    f: BinaryIO | None = None
    name: str = ""
    dev: int = 0
    inode: int = 0
    offset: int = 0                     # end of the last whole line handed out
    lines: int = 0
    fp: str = ""
    fp_len: int = 0
    skipping: bool = False              # dropping the rest of a line cut at max_line
    backlog: _Backlog | None = None     # a rotated copy to finish first
    draining: list[_Drain] = field(default_factory=list)


def fingerprint(f: BinaryIO, length: int = FP_LEN) -> tuple[str, int]:
    head = os.pread(f.fileno(), length, 0)
    return hashlib.sha256(head).hexdigest(), len(head)


def head_matches(head: bytes, pos) -> bool:
    """Whether a file starting with `head` is the one position `pos` was taken of (it may have
    grown since): its first `pos.fp_len` bytes hash as they did then."""
    return len(head) >= pos.fp_len and hashlib.sha256(head[: pos.fp_len]).hexdigest() == pos.fingerprint


def rotated_copies(path: Path) -> list[Path]:
    """Where logrotate, newsyslog or `postfix logrotate` put the previous file: mail.log.1,
    mail.log.0, mail.log-20261122, postfix.log.20261122-063632, compressed or not; newest first."""
    base = glob.escape(str(path))
    stamp = "[12]" + "[0-9]" * 7 + "-" + "[0-9]" * 6           # maillog_file_rotate_suffix, %Y%m%d-%H%M%S
    cands = {Path(p) for pat in (f"{base}.[01]", f"{base}.[01].*", f"{base}-*", f"{base}.{stamp}", f"{base}.{stamp}.*")
             for p in glob.glob(pat)}
    return sorted((c for c in cands if c.is_file()), key=lambda p: p.stat().st_mtime, reverse=True)


class _Backlog:
    """A rotated copy (maybe compressed) read on from a saved position, a round at a time."""

    def __init__(self, path: Path, pos) -> None:
        self.path, self.offset, self.lines = path, pos.offset, pos.lines
        self.dev, self.inode, self.fp, self.fp_len = pos.dev, pos.inode, pos.fingerprint, pos.fp_len
        self.stream = open_source(Source(str(path), path))
        left = self.offset
        while left:
            got = self.stream.read(min(READ_MAX, left))
            if not got:
                break
            left -= len(got)
        self.rest = b""

    @staticmethod
    def holds(path: Path, pos) -> bool:
        """Whether `path` (maybe compressed) is the file `pos` was read from: by its first bytes,
        and by its inode too when those were none (an empty file)."""
        try:
            st = path.stat()
            with open_source(Source(str(path), path)) as f:
                head = f.read(pos.fp_len) if pos.fp_len else b""
        except READ_ERRORS:
            return False
        return head_matches(head, pos) and (pos.fp_len > 0 or (st.st_dev, st.st_ino) == (pos.dev, pos.inode))

    def read(self) -> tuple[bytes, int, bool]:
        """(whole lines, lines before them, finished); a copy does not grow, so its last line is whole."""
        data = self.stream.read(READ_MAX)
        before = self.lines
        if not data:
            out = self.rest + b"\n" if self.rest else b""
            self.stream.close()
        else:
            buf = self.rest + data
            cut = buf.rfind(b"\n") + 1
            out, self.rest = buf[:cut], buf[cut:]
        self.offset += len(out) - (not data and bool(out))      # the newline added at the end is not in the file
        self.lines += out.count(b"\n")
        return out, before, not data

    def position(self, path: Path) -> dict:
        return {"path": str(path), "dev": self.dev, "inode": self.inode, "fingerprint": self.fp,
                "fp_len": self.fp_len, "offset": self.offset, "lines": self.lines}


class Follower:
    def __init__(self, specs: list[Spec], saved: dict, *, max_line: int = 8192, from_start: bool = False,
                 poll: bool | None = None, log=None, journals: list[JournalSpec] = ()) -> None:
        self.files = [_File(s) for s in specs]
        self.max_line = max_line
        self.log = log or (lambda msg: print(f"logban: {msg}", file=sys.stderr))
        self._notifier = None if poll or not specs else self._inotify(poll is False)
        for fs in self.files:
            self._resume(fs, saved.get(str(fs.spec.path)), from_start)
        self.journals = [JournalFollower(j, saved.get(j.name), from_start=from_start, log=self.log) for j in journals]
        self._taken = True                  # read() ran since the last wait()

    # ---- start: where to go on from --------------------------------------------------------
    def _resume(self, fs: _File, pos, from_start: bool) -> None:
        path = fs.spec.path
        if not self._open(fs):
            self.log(f"{path}: does not exist yet; waiting for it")
            return
        if pos is None:
            if not from_start:
                self._skip_to_end(fs)
            return
        if (fs.dev, fs.inode) == (pos.dev, pos.inode) and head_matches(os.pread(fs.f.fileno(), pos.fp_len, 0), pos):
            if os.fstat(fs.f.fileno()).st_size >= pos.offset:
                fs.offset, fs.lines = pos.offset, pos.lines
                return
            self.log(f"{path}: truncated while logban was down; reading it from the start")
        # Rotated while logban was down: finish the copy that holds our position first.
        for cand in rotated_copies(path):
            if _Backlog.holds(cand, pos):
                try:
                    fs.backlog = _Backlog(cand, pos)
                except READ_ERRORS as e:
                    self.log(f"{cand}: cannot read the rest of it: {e}")
                    return
                self.log(f"{path}: rotated while logban was down; finishing {cand} first")
                return

    def _open(self, fs: _File) -> bool:
        try:
            f = open(fs.spec.path, "rb")
        except OSError:
            return False
        st = os.fstat(f.fileno())
        fs.f, fs.name, fs.dev, fs.inode = f, str(fs.spec.path), st.st_dev, st.st_ino
        fs.offset = fs.lines = 0
        fs.skipping = False
        fs.fp, fs.fp_len = fingerprint(f)
        return True

    def _skip_to_end(self, fs: _File) -> None:
        """A file met for the first time: what is already in it is history (`logban scan --apply` reads it)."""
        size = os.fstat(fs.f.fileno()).st_size
        # Count lines so offences get true line numbers, up to the last whole line.
        fs.f.seek(0)
        n, pos, last_nl = 0, 0, 0
        while pos < size:
            buf = fs.f.read(min(READ_MAX, size - pos))
            if not buf:
                break
            n += buf.count(b"\n")
            i = buf.rfind(b"\n")
            if i >= 0:
                last_nl = pos + i + 1
            pos += len(buf)
        fs.offset, fs.lines = last_nl, n

    # ---- positions -------------------------------------------------------------------------
    def positions(self) -> list[dict]:
        out = []
        for fs in self.files:
            if fs.backlog is not None:
                # Until the rotated copy is finished, its position is the one kept.
                out.append(fs.backlog.position(fs.spec.path))
                continue
            if fs.f is None:
                continue
            if fs.fp_len < FP_LEN:
                fs.fp, fs.fp_len = fingerprint(fs.f)     # the file has grown: a longer, surer fingerprint
            out.append({"path": str(fs.spec.path), "dev": fs.dev, "inode": fs.inode, "fingerprint": fs.fp,
                        "fp_len": fs.fp_len, "offset": fs.offset, "lines": fs.lines})
        return out + [j.position() for j in self.journals]

    # ---- reading ---------------------------------------------------------------------------
    def read(self) -> list[Chunk]:
        """Whatever whole lines are new in every file (at most READ_MAX bytes of each)."""
        out = []
        for fs in self.files:
            try:
                self._read_file(fs, out)
            except OSError as e:
                self.log(f"{fs.spec.path}: {e.strerror or e}; will try again")
        self._taken = True
        for j in self.journals:
            got = j.read()
            if got is not None:
                out.append(Chunk(j.name, j.name, j.spec.mta, *got))
        return out

    def _read_file(self, fs: _File, out: list[Chunk]) -> None:
        if fs.backlog is not None:
            b = fs.backlog
            try:
                data, before, done = b.read()
            except READ_ERRORS as e:
                self.log(f"{b.path}: {e}; going on with {fs.spec.path}")
                data, before, done = b"", b.lines, True
            if data:
                out.append(Chunk(str(fs.spec.path), str(b.path), fs.spec.mta, data, before))
            if done:
                fs.backlog = None
            return
        if fs.draining:
            self._drain(fs, out)
        if fs.f is None:
            if self._open(fs):
                self.log(f"{fs.spec.path}: appeared; following it")
            else:
                return
        st = os.fstat(fs.f.fileno())
        if st.st_size < fs.offset:
            self.log(f"{fs.name}: truncated (copytruncate?); reading it from the start")
            fs.offset = fs.lines = 0
            fs.skipping = False
            fs.fp, fs.fp_len = fingerprint(fs.f)
        self._take(fs.spec, fs, out, final=False)
        try:
            now = os.stat(fs.spec.path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (fs.dev, fs.inode):
            # Renamed, deleted, or the symlink points elsewhere: the old file is read to its
            # end first, and on for a while (its writer may add lines until it reopens).
            fs.draining.append(_Drain(fs.f, fs.name, fs.offset, fs.lines, fs.skipping, time.monotonic() + DRAIN_IDLE))
            fs.f = None
            if now is not None and self._open(fs):
                self.log(f"{fs.spec.path}: rotated; following the new file")
                self._take(fs.spec, fs, out, final=False)

    def _drain(self, fs: _File, out: list[Chunk]) -> None:
        now = time.monotonic()
        for d in list(fs.draining):
            before = len(out)
            self._take(fs.spec, d, out, final=False)
            if len(out) > before:
                d.until = now + DRAIN_IDLE
            elif now >= d.until:
                self._take(fs.spec, d, out, final=True)
                d.f.close()
                fs.draining.remove(d)

    def _take(self, spec: Spec, fs: _File | _Drain, out: list[Chunk], *, final: bool) -> None:
        while True:
            data = os.pread(fs.f.fileno(), READ_MAX, fs.offset)
            if not data:
                return
            consumed = len(data)
            if fs.skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    fs.offset += consumed
                    continue
                fs.offset += nl + 1
                fs.skipping = False
                data = data[nl + 1:]
                consumed = len(data)
                if not data:
                    continue
            cut = data.rfind(b"\n") + 1
            if cut:
                whole = data[:cut]
            elif len(data) >= self.max_line:
                whole, cut = data[: self.max_line] + b"\n", self.max_line      # an endless line: cut it
                fs.skipping = True
            elif final:
                whole, cut = data + b"\n", consumed       # the old file's last line: it will not be finished
            else:
                return                  # a line still being written: wait for its newline
            out.append(Chunk(str(spec.path), fs.name, spec.mta, whole, fs.lines))
            fs.offset += cut
            fs.lines += whole.count(b"\n")
            if cut == len(data) and len(data) < READ_MAX:
                return                  # all read; else the rest may be an endless line to cut now

    # ---- waiting ---------------------------------------------------------------------------
    def _inotify(self, required: bool):
        try:
            import pyinotify
        except ImportError as e:
            if required:
                raise
            self.log(f"inotify unavailable ({e}); polling")
            return None
        wm = pyinotify.WatchManager()
        mask = (pyinotify.IN_MODIFY | pyinotify.IN_CREATE | pyinotify.IN_MOVED_TO | pyinotify.IN_MOVED_FROM
                | pyinotify.IN_DELETE | pyinotify.IN_CLOSE_WRITE | pyinotify.IN_ATTRIB)
        dirs = set()
        for fs in self.files:
            p = fs.spec.path
            dirs.add(str(p.parent.resolve() if p.parent.exists() else p.parent))
            if p.is_symlink():
                dirs.add(str(p.resolve().parent))
        self._wm = wm
        for d in dirs:
            if os.path.isdir(d):
                wm.add_watch(d, mask, quiet=True)
        return pyinotify.Notifier(wm, default_proc_fun=lambda _e: None, timeout=0)

    @property
    def mode(self) -> str:
        return "inotify" if self._notifier is not None else "polling" if self.files else "journalctl"

    def wait(self, timeout: float, wake_fd: int | None = None) -> None:
        """Until something may have changed in a followed directory, `wake_fd` is readable
        (news from the store), or `timeout` seconds."""
        n = self._notifier
        fds = [] if wake_fd is None else [wake_fd]
        if n is not None:
            fds.append(self._wm.get_fd())
        if self._taken:
            # A pipe with news stays readable until it is read: while the caller does not read
            # (the store is away and its buffer full) it must not wake the loop at once.
            fds += [fd for j in self.journals if (fd := j.fileno()) is not None]
        self._taken = False
        polling = n is None and bool(self.files)
        ready = select.select(fds, [], [], min(max(timeout, 0), 0.25 if polling else timeout))[0]
        if wake_fd is not None and wake_fd in ready:
            os.read(wake_fd, 4096)
        if n is not None and self._wm.get_fd() in ready:
            n.read_events()
            n.process_events()

    def close(self) -> None:
        for fs in self.files:
            for d in fs.draining:
                d.f.close()
            fs.draining.clear()
            if fs.f is not None:
                fs.f.close()
                fs.f = None
        if self._notifier is not None:
            self._notifier.stop()
        for j in self.journals:
            j.close()


def unfollowable(path: Path) -> str | None:
    """Why `path` can never be followed as a live log, or None (a missing file is waited for).
    Checked without opening it: opening a FIFO would block."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e.strerror.lower() if e.strerror else str(e)
    if stat.S_ISDIR(st.st_mode):
        return "is a directory; follow a log file (logban scan reads directories)"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO or device cannot be followed; pipe it to `logban scan -`)"
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:
        return (e.strerror or str(e)).lower()
    if path.name.endswith((".gz", ".bz2", ".xz")) or head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return "compressed; the daemon follows the live log (logban scan reads compressed files)"
    return None
