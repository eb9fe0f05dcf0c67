"""Where lines come from on hosts without a mail log: the systemd journal.

The journal is read by `journalctl -o export` as a child process (no compiled
dependency; the README's "journal" section says why). Each selected entry
becomes one syslog line with an ISO 8601 stamp made of the entry's own
`__REALTIME_TIMESTAMP` (exact to the microsecond, no year to guess), its
`_HOSTNAME` and its `SYSLOG_IDENTIFIER[pid]`, followed by its `MESSAGE`; the
parser then reads it like any log line. Entries are selected in Python (by
identifier prefix or unit), because journalctl matches only whole values.

Two uses: `scan` reads a journal once as a stream of such lines
(`JournalStream`), and `run` follows one (`JournalFollower`), whose position
is the cursor of the last entry read, saved with the offences read up to it.
"""
from __future__ import annotations

import fcntl
import fnmatch
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .parse import iso

JOURNALCTL = "journalctl"
# Identifier prefixes of the MTAs the shipped rule packs read (postfix/smtpd, postfix-out/smtpd,
# sm-mta, sendmail, qmail-smtpd, and the programs qmail runs in front of it).
DEFAULT_IDENTIFIERS = ("postfix", "sm-mta", "sendmail", "qmail", "vchkpw", "spamdyke", "rblsmtpd",
                       "tcpserver", "smtpd")
# What journalctl prints of an entry besides its cursor and stamps: the less, the cheaper for it.
FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,_PID,_HOSTNAME,_UID"
UNIT_FIELDS = ",_SYSTEMD_UNIT,_COMM"      # with units: an entry may have no identifier, its program names it
# Bytes taken from journalctl per round, so one busy journal cannot starve the rest: about
# as many entries as a file's 1 MiB round holds lines (an exported entry is twice a line).
READ_MAX = 2 << 20
PIPE_SIZE = 1 << 20         # what an unprivileged process may ask for by default (pipe-max-size)
RETRY_EVERY = 2.0           # seconds before journalctl is started again after it ended

_TAG_BAD = re.compile(rb"[^\w./@-]")
# The accounts the MTAs of the shipped packs log as (Debian's names, and qmail's and its
# add-ons' customary ones): root for the masters, postfix, sendmail's smmsp, qmail's q*
# users, vpopmail's vchkpw, Plesk's popuser. Names this host has no account for are skipped.
MAIL_USERS = ("root", "postfix", "smmsp", "mail", "qmaild", "qmaill", "qmailp", "qmailq", "qmailr", "qmails",
              "alias", "vpopmail", "popuser", "Debian-exim", "exim")


def mail_uids(users: tuple[str, ...]) -> frozenset[bytes] | None:
    """The `_UID` values (as journald writes them) of `users`, names or numbers; None: "*", anyone."""
    if "*" in users:
        return None
    out = set()
    for u in users:
        if u.isdigit():
            out.add(str(int(u)).encode())
            continue
        try:
            out.add(str(pwd.getpwnam(u).pw_uid).encode())
        except KeyError:
            pass
    return frozenset(out)


def user_note(uid: bytes, count: int | None = None) -> str:
    """What is said of the entries of a uid that were left out (`Selection.users`)."""
    return (f"{'entries' if count is None else f'{count:,} entries'} of uid {uid.decode('ascii', 'replace')} "
            "(not one of the mail system's users) under a mail program's name are not read (journal users)")


_HOST_BAD = re.compile(rb"[\s]")


@dataclass(frozen=True)
class Selection:
    """Which entries are mail log lines: an identifier starting with one of `identifiers`,
    or a unit matching one of `units` (shell patterns like "postfix@*.service"), written by one
    of `users`. Any local user, or a web application's account, can log under any identifier
    (`logger -t postfix/smtpd ...`) and so have logban ban an address of their choosing;
    journald's own `_UID` cannot be forged, and the MTAs log as root or their own accounts.
    `users`: names or uids, "*" for anyone."""
    identifiers: tuple[str, ...] = DEFAULT_IDENTIFIERS
    units: tuple[str, ...] = ()
    users: tuple[str, ...] = MAIL_USERS

    @property
    def fields(self) -> str:
        return FIELDS + (UNIT_FIELDS if self.units else "")

    def matcher(self):
        ids = tuple(i.encode() for i in self.identifiers)
        units = (re.compile(b"|".join(fnmatch.translate(u).encode() for u in self.units)) if self.units else None)

        def wants(ident: bytes, unit: bytes) -> bool:
            return (bool(ids) and ident.startswith(ids)) or (units is not None and units.match(unit) is not None)
        return wants


@dataclass(frozen=True)
class JournalSpec:
    """A journal to follow: the system's (directory None) or the files in `directory`."""
    directory: Path | None = None
    mta: str | None = None                  # the rule pack; None: by identifier
    select: Selection = field(default_factory=Selection)

    @property
    def name(self) -> str:
        """How events, positions and metrics name it."""
        return "journal" if self.directory is None else f"journal:{self.directory}"

    def where(self) -> list[str]:
        return [] if self.directory is None else ["-D", str(self.directory)]


def export_entries(buf: bytes, pos: int = 0) -> tuple[list[dict[bytes, bytes]], int]:
    """The entries complete in `buf` (journalctl -o export) from `pos` on, and where the
    rest begins. A field is `KEY=value` on a line, or, when its value is not printable text
    (a line break, control characters), `KEY`, a 64-bit little-endian length and the bytes."""
    out = []
    find = buf.find
    while (end := find(b"\n\n", pos)) >= 0:
        e = {}
        for ln in buf[pos:end].split(b"\n"):
            k, sep, v = ln.partition(b"=")
            if not sep:
                break               # a binary field: read field by field
            e[k] = v
        else:
            out.append(e)
            pos = end + 2
            continue
        got = _binary_entry(buf, pos)
        if got is None:
            break
        e, pos = got
        out.append(e)
    return out, pos


def _binary_entry(buf: bytes, pos: int) -> tuple[dict[bytes, bytes], int] | None:
    e = {}
    while (nl := buf.find(b"\n", pos)) >= 0:
        if nl == pos:
            return e, pos + 1
        eq = buf.find(b"=", pos, nl)
        if eq >= 0:
            e[buf[pos:eq]] = buf[eq + 1:nl]
            pos = nl + 1
            continue
        if len(buf) < nl + 9:
            return None
        end = nl + 9 + int.from_bytes(buf[nl + 1:nl + 9], "little")
        if len(buf) <= end:
            return None
        e[buf[pos:nl]] = buf[nl + 9:end]
        pos = end + 1
    return None


class Converter:
    """Journal entries to syslog lines of the selected ones."""

    def __init__(self, select: Selection) -> None:
        self.wants = select.matcher()
        self.uids = mail_uids(select.users)
        self.refused: dict[bytes, int] = {}     # uid of another user: its entries left out
        self._sec = -1
        self._stamp = b""
        self._heads: dict[tuple[bytes, bytes, bytes], bytes | None] = {}    # (identifier, unit, host): " host tag"

    def _head(self, ident: bytes, unit: bytes, host: bytes) -> bytes | None:
        """" host tag" for an entry of this program, unit and host; None: not selected."""
        key = (ident, unit, host)
        got = self._heads.get(key, b"")
        if got == b"":
            got = None
            if self.wants(ident, unit):
                tag = _TAG_BAD.sub(b"_", ident[:64]) or b"-"
                got = b" %s %s" % (_HOST_BAD.sub(b"_", host[:255]) or b"-", tag)
            if len(self._heads) > 10_000:
                self._heads.clear()
            self._heads[key] = got
        return got

    def stamp(self, usec: int) -> bytes:
        sec, us = divmod(usec, 1_000_000)
        if sec != self._sec:
            self._sec, self._stamp = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        return b"%s.%06dZ" % (self._stamp, us)

    def line(self, e: dict[bytes, bytes]) -> bytes | None:
        """The entry as one syslog line (newline-terminated), or None if it is not selected."""
        head = self._head(e.get(b"SYSLOG_IDENTIFIER") or e.get(b"_COMM") or b"", e.get(b"_SYSTEMD_UNIT", b""),
                          e.get(b"_HOSTNAME", b""))
        msg = e.get(b"MESSAGE")
        rt = e.get(b"__REALTIME_TIMESTAMP", b"")
        if head is None or msg is None or not rt.isdigit():
            return None
        uid = e.get(b"_UID")
        if uid is not None and self.uids is not None and uid not in self.uids:
            self.refused[uid] = self.refused.get(uid, 0) + 1
            return None
        pid = e.get(b"_PID", b"")
        pid = b"[%s]: " % pid if pid.isdigit() and len(pid) <= 10 else b": "
        # One entry, one line: a message's own line breaks cannot start a line of their own.
        return b"".join((self.stamp(int(rt)), head, pid, msg.replace(b"\n", b" ") if b"\n" in msg else msg, b"\n"))


def journal_if_missing(follow: list[tuple[Path, str | None]], if_missing: set[Path], log
                       ) -> tuple[list[tuple[Path, str | None]], list[JournalSpec]]:
    """The followed files that are there, and the system journal (with the entry's rule pack)
    for each file with journal_if_missing that is not: Debian 12 and later, without rsyslog,
    log mail to the journal only. Decided at start and at each reload."""
    files, journals = [], []
    for p, mta in follow:
        if p in if_missing and not p.exists() and shutil.which(JOURNALCTL):
            log(f"{p} does not exist: following the system journal instead (journal_if_missing)")
            journals.append(JournalSpec(mta=mta))
        else:
            files.append((p, mta))
    return files, journals


def journalctl(where: list[str], select: Selection, *extra: str) -> list[str]:
    return [JOURNALCTL, *where, "-o", "export", "-q", "--no-pager", f"--output-fields={select.fields}", *extra]


def since_arg(t: float) -> str:
    return f"@{t:.6f}"


@dataclass(frozen=True)
class JournalQuery:
    """A journal to read once: journalctl's arguments naming it (-D DIR, --file F, none: the
    system's), the selection, and the time range (epoch seconds, either end open)."""
    where: tuple[str, ...] = ()
    select: Selection = field(default_factory=Selection)
    since: float | None = None
    until: float | None = None


class JournalStream:
    """A journal read once (`logban scan`), as a binary stream of the selected entries'
    syslog lines; journalctl's complaint, if it fails, is raised as OSError at the end."""

    def __init__(self, q: JournalQuery) -> None:
        extra = ([f"--since={since_arg(q.since)}"] if q.since is not None else []) + \
                ([f"--until={since_arg(q.until)}"] if q.until is not None else [])
        self.err = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(journalctl(list(q.where), q.select, *extra), stdout=subprocess.PIPE,
                                         stderr=self.err, stdin=subprocess.DEVNULL)
        except OSError:
            self.err.close()
            raise
        self.conv = Converter(q.select)
        self.where = q.where
        self.buf = b""
        self.done = False

    def read(self, size: int = -1) -> bytes:
        out: list[bytes] = []
        n = 0
        line = self.conv.line
        while not self.done and (size < 0 or n < size):
            data = self.proc.stdout.read1(READ_MAX)
            if not data:
                self._finish()
                break
            es, used = export_entries(self.buf + data)
            self.buf = (self.buf + data)[used:]
            for e in es:
                got = line(e)
                if got is not None:
                    out.append(got)
                    n += len(got)
        return b"".join(out)

    def _finish(self) -> None:
        self.done = True
        self.err.seek(0)
        err = self.err.read().decode("utf-8", "replace").strip().splitlines()
        # Said, as the follower logs it: entries left out in silence made a journal where the
        # MTA logs as an account not in `users` (another host's numbering) read as clean.
        for uid, n in self.conv.refused.items():
            print(f"logban: journal {' '.join(self.where) or '(the system journal)'}: {user_note(uid, n)}",
                  file=sys.stderr)
        if self.proc.wait() != 0:
            raise OSError(0, f"{JOURNALCTL}: " + (err[-1] if err else f"exit status {self.proc.returncode}"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _has_journals(d: Path) -> bool:
    """Whether `d` holds journal files, as journalctl -D finds them (in it, or in a
    machine-id directory below it)."""
    try:
        return any(True for pat in ("*.journal", "*.journal~", "*/*.journal", "*/*.journal~") for _ in d.glob(pat))
    except OSError:
        return False


def first_cursor(where: list[str], *how: str) -> tuple[str, int] | None:
    """(cursor, realtime µs) of the entry `how` points at (like "-n", "1": the newest), or None."""
    try:
        p = subprocess.run(journalctl(where, Selection(), "-n", "1", *how), capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for e in export_entries(p.stdout)[0]:
        rt = e.get(b"__REALTIME_TIMESTAMP", b"")
        if b"__CURSOR" in e and rt.isdigit():
            return e[b"__CURSOR"].decode("ascii", "replace"), int(rt)
    return None


class JournalFollower:
    """One journal followed by a `journalctl --follow` child. The position is the cursor of the
    last entry read (selected or not) and its time; `lines` counts the selected entries read,
    which number the events (their `line`) like the lines of a file."""

    def __init__(self, spec: JournalSpec, saved, *, from_start: bool = False, log=None) -> None:
        self.spec = spec
        self.name = spec.name
        self.log = log or (lambda msg: print(f"logban: {msg}", file=sys.stderr))
        self.conv = Converter(spec.select)
        self.proc: subprocess.Popen | None = None
        self.err = None                 # journalctl's stderr, a file: a full pipe would stop it
        self.buf = b""
        self.retry_at = 0.0
        self.behind = 0.0               # seconds the last entry read is behind now, when more was waiting
        self.cursor = ""                # of the last entry read; "": none yet, read from the start
        self.realtime = 0               # µs: that entry's time
        self.lines = 0
        self.checked = True             # the saved cursor has been looked for in the journal
        self.waiting = False            # for journal files to appear in the directory
        self.ended_why = ""             # the last reason journalctl gave for ending, as logged
        if saved is not None:
            self.cursor, self.realtime, self.lines = saved.fingerprint, int(saved.offset), int(saved.lines)
            self.checked = not self.cursor
        elif not from_start:
            # From now on: after the newest entry. None yet (an empty or missing directory):
            # all that comes is new, as a log file that appears is read from its start.
            self.cursor, self.realtime = first_cursor(spec.where()) or ("", 0)
        self._start()

    # ---- the child ---------------------------------------------------------------------
    def _resume_args(self) -> list[str]:
        if not self.cursor:
            return []
        if not self.checked:
            self.checked = True
            at = first_cursor(self.spec.where(), f"--cursor={self.cursor}")
            if at is None or at[0] != self.cursor:
                after = self.realtime / 1e6
                self.log(f"{self.name}: the saved cursor is no longer in the journal (vacuumed or rotated "
                         f"away); going on from the oldest entry after {iso(after)}: entries may have been lost")
                return [f"--since={since_arg(after + 1e-6)}"]
        return [f"--after-cursor={self.cursor}"]

    def _start(self) -> None:
        d = self.spec.directory
        if d is not None and not _has_journals(d):
            # journalctl -D on a directory without journal files ends at once: looked at again
            # every half second (the loop comes round at least once a second) until one is there.
            if not self.waiting:
                self.waiting = True
                self.log(f"{self.name}: no journal files in {d} yet; waiting for them")
            self.retry_at = time.monotonic() + 0.5
            return
        self.waiting = False
        self.err = tempfile.TemporaryFile()
        try:
            # A session of its own: a terminal's ^C or a signal to logban's group is logban's to
            # handle (it stops the child itself); after a kill -9 the child ends at its next write.
            self.proc = subprocess.Popen(journalctl(self.spec.where(), self.spec.select, "--follow", "--lines=all",
                                                    *self._resume_args()),
                                         stdout=subprocess.PIPE, stderr=self.err, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as e:
            self.log(f"{self.name}: cannot run {JOURNALCTL}: {e.strerror or e}; will try again")
            self.retry_at = time.monotonic() + RETRY_EVERY
            return
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)
        try:
            # Let journalctl run ahead while logban parses a round (Linux only).
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except OSError:
            pass
        self.buf = b""

    def _ended(self) -> None:
        self._stop()
        self.err.seek(0)
        err = self.err.read().decode("utf-8", "replace").strip().splitlines()
        self.err.close()
        why = err[-1] if err else "no reason given"
        if why != self.ended_why:           # once, not every RETRY_EVERY while it keeps failing
            self.ended_why = why
            self.log(f"{self.name}: {JOURNALCTL} ended ({why}); starting it again every {RETRY_EVERY:g} s")
        self.retry_at = time.monotonic() + RETRY_EVERY
        self.checked = False            # what it left behind may have been vacuumed meanwhile

    def _stop(self) -> None:
        p, self.proc = self.proc, None
        if p is not None:
            p.kill()
            p.wait()
            p.stdout.close()

    def fileno(self) -> int | None:
        """Readable when there is news (or journalctl ended); None while it is not running."""
        return self.proc.stdout.fileno() if self.proc is not None else None

    # ---- reading -----------------------------------------------------------------------
    def read(self) -> tuple[bytes, int] | None:
        """(the new selected entries as lines, entries read before them), or None."""
        if self.proc is None:
            if time.monotonic() >= self.retry_at:
                self._start()
            if self.proc is None:
                return None
        fd, parts, n = self.proc.stdout.fileno(), [], 0
        while n < READ_MAX:
            try:
                data = os.read(fd, READ_MAX - n)
            except BlockingIOError:
                break
            if not data:
                if not parts:
                    self._ended()
                    return None
                break
            parts.append(data)
            n += len(data)
        if not parts:
            return None
        self.ended_why = ""
        es, used = export_entries(self.buf + b"".join(parts))
        self.buf = (self.buf + b"".join(parts))[used:]
        got = self._entries(es)
        self.behind = max(0.0, time.time() - self.realtime / 1e6) if n >= READ_MAX else 0.0
        return got

    def _entries(self, es: list[dict[bytes, bytes]]) -> tuple[bytes, int] | None:
        lines: list[bytes] = []
        line = self.conv.line
        known = len(self.conv.refused)
        for e in es:
            got = line(e)
            if got is not None:
                lines.append(got)
        if len(self.conv.refused) != known:
            for uid in list(self.conv.refused)[known:]:
                self.log(f"{self.name}: {user_note(uid)}")
        for e in reversed(es):
            rt = e.get(b"__REALTIME_TIMESTAMP", b"")
            if b"__CURSOR" in e and rt.isdigit():
                self.cursor, self.realtime = e[b"__CURSOR"].decode("ascii", "replace"), int(rt)
                break
        if not lines:
            return None
        before, self.lines = self.lines, self.lines + len(lines)
        return b"".join(lines), before

    def position(self) -> dict:
        """As a row of the positions table: the cursor in `fingerprint`, its time (µs) in `offset`."""
        return {"path": self.name, "dev": 0, "inode": 0, "fingerprint": self.cursor, "fp_len": 0,
                "offset": self.realtime, "lines": self.lines}

    def close(self) -> None:
        self._stop()
        if self.err is not None:
            self.err.close()
