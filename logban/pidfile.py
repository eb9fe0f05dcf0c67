"""The daemon's pid file, safe in a directory other users can reach.

Without root the default directory is `$XDG_RUNTIME_DIR`, else `/tmp/logban-<uid>`: a
name another user can predict and create first (a symlink in it to a victim file, or a
pid file naming any process for `reload` to signal). So a pid directory must be ours and
writable by nobody else (the /tmp one exactly 0700), and the file is written and read
without following symlinks.
"""
from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

from .errors import UsageError


def _tmp_dir() -> Path:
    return Path(f"/tmp/logban-{os.getuid()}")


def default_pid_file() -> Path:
    if os.geteuid() == 0:
        return Path("/run/logban/logban.pid")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or _tmp_dir()) / "logban.pid"


def check_dir(d: Path, *, create: bool) -> None:
    """Refuse a pid directory that is a symlink, not ours, or writable by others."""
    if create and d == _tmp_dir():
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
    elif create:
        d.mkdir(parents=True, exist_ok=True)
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        raise UsageError(f"{d}: no such directory; is `logban run` running?") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{d}: pid directory is not a directory (a symlink?): refused")
    strict = d == _tmp_dir()
    if st.st_uid != os.geteuid() or (st.st_mode & (0o077 if strict else 0o022)):
        raise UsageError(f"{d}: pid directory owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; "
                         f"it must be ours (uid {os.geteuid()}) and {'0700' if strict else 'writable by us only'}: "
                         "refused (remove it, or set daemon.pid_file)")


def write_pid(path: Path) -> None:
    check_dir(path.parent, create=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)               # replaces a symlink, never writes through one


def read_pid(path: Path) -> int:
    check_dir(path.parent, create=False)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise UsageError(f"{path}: no pid file; is `logban run` running?") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the pid file: {e.strerror} (a symlink is refused)") from None
    with os.fdopen(fd) as f:
        text = f.read(64)
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        raise UsageError(f"{path}: not a pid file") from None
    if pid <= 1:
        raise UsageError(f"{path}: not a pid file")
    return pid


def send_reload(pid_file: Path) -> int:
    """`logban reload`: SIGHUP to the running daemon, only if that pid is a logban."""
    pid = read_pid(pid_file)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{pid_file}: process {pid} is not running") from None
    except OSError:
        cmdline = b"logban"                 # no /proc view of it: the directory check stands
    if b"logban" not in cmdline:
        raise UsageError(f"{pid_file}: process {pid} is not logban: not signalled")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise UsageError(f"{pid_file}: process {pid} is not running") from None
    return pid
