"""Where lines come from: files, rotated sets, compressed files, stdin.

Files are streamed in chunks of whole lines, never read whole, and a line
longer than `max_line` is cut there (the rest of it is skipped), so memory
stays bounded whatever the input.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import regex

from .journal import JournalQuery, JournalStream

CHUNK = 1 << 20
# What a missing, unreadable, truncated or corrupt file raises while it is read.
READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)
_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
# mail.log, mail.log.1, mail.log.2.gz, maillog-20261120, maillog-20261120.xz, and what
# `postfix logrotate` makes of Postfix's own maillog_file: postfix.log.20261120-063632(.gz)
_ROTATED = regex.compile(r"(?P<base>.+?)(?:\.(?P<n>\d{1,4})|-(?P<date>\d{8}(?:\d{2})?)|\.(?P<stamp>\d{8}-\d{6}))?")
# Not logs, even in a log directory.
_NOT_LOGS = (".json", ".toml", ".md", ".rst", ".html", ".py", ".pid", ".lock", ".swp")


@dataclass(frozen=True)
class Source:
    name: str                 # as shown in reports and events
    path: Path | None         # None: standard input, or a journal
    journal: JournalQuery | None = None

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None


def rotation_key(p: Path) -> tuple:
    """Sort key: one rotated set together, its oldest member first."""
    name = p.name
    for suf in _COMPRESSED:
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    m = _ROTATED.fullmatch(name)
    base, n, date = m.group("base"), m.group("n"), m.group("date") or m.group("stamp")
    if n is not None:
        age = (0, -int(n), "")          # mail.log.9 before mail.log.1
    elif date is not None:
        age = (0, 0, date)              # maillog-20261119 before maillog-20261120
    else:
        age = (1, 0, "")                # the live file last
    return (str(p.parent), base, age)


def expand(paths: list[str]) -> list[Source]:
    """Files, directories (walked) and "-" in reading order: rotated sets oldest first."""
    files: list[Path] = []
    out: list[Source] = []
    for arg in paths:
        if arg == "-":
            out.append(Source("-", None))
            continue
        p = Path(arg)
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files += [Path(root, n) for n in names
                          if not n.startswith(".") and not n.endswith(_NOT_LOGS)]
        else:
            # A missing file is an unreadable input like any other: reported when it is
            # read, and the others are still read (exit 1, not a usage error).
            files.append(p)
    files = sorted(dict.fromkeys(files), key=rotation_key)
    return [Source(str(f), f) for f in files] + out


def read_error(e: BaseException) -> str:
    """A read failure in the user's words: "No such file or directory", not "[Errno 2] ...: 'x'"."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


def open_source(src: Source) -> BinaryIO:
    if src.journal is not None:
        return JournalStream(src.journal)
    if src.path is None:
        return sys.stdin.buffer
    f = open(src.path, "rb")
    head = f.peek(6)[:6] if hasattr(f, "peek") else b""
    for magic, opener in _MAGIC:
        if head.startswith(magic):
            f.close()
            return opener(src.path, "rb")
    return f


def chunks(stream: BinaryIO, max_line: int, size: int = CHUNK) -> Iterator[bytes]:
    """Chunks of whole lines; the last may lack its newline. Over-long lines are cut."""
    rest = b""
    skipping = False            # dropping the tail of a line cut at max_line
    while True:
        data = stream.read(size)
        if not data:
            break
        if skipping:
            nl = data.find(b"\n")
            if nl < 0:
                continue
            data = data[nl:]
            skipping = False
        buf = rest + data if rest else data
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield buf[:cut]
            rest = buf[cut:]
        else:
            rest = buf
        if len(rest) > max_line:
            rest = rest[:max_line]
            skipping = True
    if rest:
        yield rest
