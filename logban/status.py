"""`logban status`: the running daemon's state, as the daemon itself publishes it.

The daemon rewrites a small JSON file beside its pid file about once a second
(`logban.status.json` next to `logban.pid`): written to a new file, then renamed over
the old one, so a reader never sees half of it. A file rather than a control socket:
reading it never waits for, wakes or slows the daemon, needs no listener an attacker
could talk to, and still answers (with its age) when the daemon's loop is stuck. The
file names the process by pid *and* its start time in the kernel (/proc/PID/stat), so
the state of a daemon that died (kill -9, a crash) is never taken for the state of
another process that got its pid; a clean stop writes a last state saying it stopped.

The counts from the store (offences and bans of this node in the last hour and day,
the last ban) are read every STORE_EVERY seconds, not every second: on a busy server a
day holds millions of offences.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

from .parse import iso

PUBLISH_EVERY = 1.0         # seconds between rewrites of the state file
STORE_EVERY = 5.0           # seconds between the store's counts
STALLED_AFTER = 30.0        # a state this old while the process lives: the daemon's loop is stuck
LIST_MAX = 1000            # active bans listed by target (the rest: `logban list`)
ERROR_MAX = 500             # characters of the last error kept


def status_path(pid_file: Path) -> Path:
    return pid_file.with_name(f"{pid_file.stem}.status.json")


def proc_start(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (None: no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text.rsplit(")", 1)[1].split()[19])      # field 22; the name may hold spaces and ")"
    except (IndexError, ValueError):
        return None


class LastError(logging.Handler):
    """Keeps the daemon's last error line (the log says the rest)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: dict | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:
            msg = str(record.msg)
        self.last = {"time": iso(record.created), "message": msg[:ERROR_MAX]}


def journal_sources(follower, read: dict[str, int]) -> list[dict]:
    """One entry per followed journal: its position is the cursor of the last entry read, its
    lag how far that entry was behind now while more waited (bytes mean nothing there)."""
    return [{"source": j.name, "kind": "journal", "open": j.proc is not None, "waiting": j.waiting,
             "cursor": j.cursor, "line": j.lines, "lines_read": read.get(j.name, 0),
             "lag_bytes": None, "lag_seconds": round(j.behind, 1)} for j in follower.journals]


def file_sources(follower, read: dict[str, int], now: float) -> list[dict]:
    """One entry per followed file. `source` and `kind` are what every kind of source has
    (`journal_sources` adds those of kind "journal")."""
    out = []
    for fs in follower.files:
        size = mtime = None
        if fs.f is not None:
            try:
                st = os.fstat(fs.f.fileno())
                size, mtime = st.st_size, st.st_mtime
            except OSError:
                pass
        lag = max(0, size - fs.offset) if size is not None else None
        out.append({
            "source": str(fs.spec.path), "kind": "file", "open": fs.f is not None,
            "reading": fs.name or None, "position": fs.offset, "line": fs.lines,
            "lines_read": read.get(str(fs.spec.path), 0),
            "lag_bytes": lag,
            # The oldest unread byte was written at the latest when the file last changed.
            "lag_seconds": (round(max(0.0, now - mtime), 1) if lag else 0.0) if mtime is not None else None,
        })
    return out


def store_counts(store, node: str, now: float) -> dict:
    """This node's offences and bans in the last hour and day, and its last ban."""
    import sqlalchemy as sa  # not at import: `logban status` and every other command would pay for it

    from .store import BANS, OFFENCES
    out: dict = {}
    with store.read() as conn:
        for name, table, col in (("offences", OFFENCES, OFFENCES.c.time), ("bans", BANS, BANS.c.created)):
            hour, day = (sa.func.coalesce(sa.func.sum(sa.case((col >= now - secs, 1), else_=0)), 0)
                         for secs in (3600, 86400))
            h, d = conn.execute(sa.select(hour, day).where(col >= now - 86400, table.c.node == node)).one()
            out[name] = {"last_hour": int(h), "last_day": int(d)}
        last = conn.execute(sa.select(BANS.c.target, BANS.c.kind, sa.cast(BANS.c.created, sa.Float), BANS.c.dry_run)
                            .where(BANS.c.node == node).order_by(BANS.c.created.desc(), BANS.c.id.desc())
                            .limit(1)).first()
    out["last_ban"] = None if last is None else {"target": last[0], "kind": last[1], "time": iso(last[2]),
                                                 "dry_run": bool(last[3])}
    return out


def active_bans(active) -> dict:
    """How many bans are in force, and which (the first LIST_MAX addresses and networks)."""
    nets = [t for t in active if "/" in t]
    addrs = [t for t in active if "/" not in t]
    return {"total": len(active), "address_count": len(addrs), "network_count": len(nets),
            "addresses": sorted(addrs[:LIST_MAX]), "networks": sorted(nets[:LIST_MAX]),
            "truncated": max(len(addrs), len(nets)) > LIST_MAX}


class Publisher:
    """Writes the daemon's state file; `tick` from the daemon's loop (it rate-limits itself)."""

    def __init__(self, path: Path, daemon) -> None:
        self.path, self.d = path, daemon
        self.started = time.time()
        self.pid = os.getpid()
        self.proc_start = proc_start(self.pid)
        self.read: dict[str, int] = {}          # followed path -> lines read by this process
        self.counts: dict = {"offences": None, "bans": None, "last_ban": None}
        self.next_write = self.next_counts = 0.0
        self.errors = LastError()
        logging.getLogger("logban").addHandler(self.errors)

    def lines(self, chunks) -> None:
        for c in chunks:
            self.read[c.path] = self.read.get(c.path, 0) + c.data.count(b"\n")

    def tick(self) -> None:
        mono = time.monotonic()
        if mono < self.next_write:
            return
        self.next_write = mono + PUBLISH_EVERY
        if mono >= self.next_counts:
            self.next_counts = mono + STORE_EVERY
            self.d._guard(self._count)
        self._write(self.state(running=True))

    def _count(self) -> None:
        self.counts = store_counts(self.d.store, self.d.opts.node, time.time())

    def stopped(self) -> None:
        logging.getLogger("logban").removeHandler(self.errors)
        try:
            self._write({**self.state(running=False), "stopped": iso(time.time())})
        except OSError:
            pass

    def state(self, *, running: bool) -> dict:
        d, now = self.d, time.time()
        active = d.engine.scorer.active
        outage = None
        if d.offline_since is not None:
            outage = iso(now - (time.monotonic() - d.offline_since))
        return {
            "running": running, "pid": self.pid, "proc_start": self.proc_start,
            "started": iso(self.started), "uptime": round(now - self.started, 1), "updated": iso(now),
            "updated_at": now, "node": d.opts.node, "backend": d.firewall.backend.name, "dry_run": d.dry_run,
            "config": str(d.cfg.path) if d.cfg.path else None,
            "sources": file_sources(d.follower, self.read, now) + journal_sources(d.follower, self.read),
            **self.counts,
            "active_bans": active_bans(active),
            "clients_scored": len(d.engine.scorer.tracks),
            "last_error": self.errors.last,
            "store": {"url": d.store.where(d.store.url), "shared": d.store.shared,
                      "reachable": d.offline_since is None, "outage_since": outage},
        }

    def _write(self, state: dict) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.path)
        except OSError as e:
            if self.errors.last is None or "status file" not in self.errors.last["message"]:
                logging.getLogger("logban").error("status file %s: %s", self.path, e.strerror or e)


def read_status(path: Path, *, store: str | None = None, node: str | None = None) -> dict:
    """What `logban status` prints: the published state with `running` checked against the
    kernel's process table; `store`/`node` given: a daemon of another store or node is not
    the one asked about."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            state = json.loads(f.read(1 << 24))
        if not isinstance(state, dict):
            raise ValueError("not an object")
    except FileNotFoundError:
        return {"running": False, "why": f"no status file {path}: no daemon ran with this pid file"}
    except (OSError, ValueError) as e:
        return {"running": False, "why": f"{path}: unreadable status file ({getattr(e, 'strerror', None) or e})"}
    pid = state.get("pid")
    if not state.get("running"):
        state["why"] = "stopped"
    elif not isinstance(pid, int) or pid <= 1 or proc_start(pid) is None or proc_start(pid) != state.get("proc_start"):
        state.update(running=False, why=f"process {pid} is gone: the daemon died without stopping cleanly")
    elif store is not None and _field(state, "store", "url") != store:
        state.update(running=False, why=f"the daemon with this pid file uses another store ({_field(state, 'store', 'url')})")
    elif node is not None and state.get("node") != node:
        state.update(running=False, why=f"the daemon with this pid file is node {state.get('node')!r}")
    else:
        t = state.get("updated_at")
        age = time.time() - t if isinstance(t, (int, float)) and math.isfinite(t) else math.inf
        state["stalled"] = age > STALLED_AFTER
        if state["stalled"]:
            state["why"] = f"its state is {age:.0f} s old: its loop may be stuck"
    state.pop("updated_at", None)
    return state


def _field(state: dict, key: str, sub: str):
    """state[key][sub], or None where the file (another version's, or damaged) has no such thing."""
    got = state.get(key)
    return got.get(sub) if isinstance(got, dict) else None
