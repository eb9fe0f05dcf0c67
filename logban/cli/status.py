"""`logban status`: what the running daemon publishes about itself (logban/status.py)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from ..config import Config
from ..pidfile import default_pid_file
from ..report import safe
from ..status import read_status, status_path
from ..units import format_duration

NOT_RUNNING = 3             # as `systemctl status`


def cmd_status(args, cfg: Config) -> int:
    pid_file = cfg.daemon.pid_file or _root_pid_file()
    path = status_path(pid_file)
    why = untrusted(path.parent)
    if why:
        state = {"running": False, "why": why}
    else:
        from ..store import Store
        url = args.db or cfg.database
        state = read_status(path, store=Store.where(url) if url else None, node=args.node or cfg.node)
    if args.json:
        print(json.dumps(state, indent=2))
        return 0 if state["running"] else NOT_RUNNING
    try:
        lines = human(state)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError):
        # Written by another logban version, or damaged: said, not a traceback.
        state = {"running": False}
        lines = [(f"logban: status file {path} has fields missing or of the wrong type: "
                  "its daemon's state is unknown (logban status --json shows the file)")]
    print("\n".join(safe(ln) for ln in lines))
    return 0 if state["running"] else NOT_RUNNING


def _root_pid_file() -> Path:
    """An admin without root asks about the system's daemon (run as root) when there is one."""
    own = default_pid_file()
    root = Path("/run/logban/logban.pid")
    return root if os.geteuid() and not status_path(own).exists() and status_path(root).exists() else own


def untrusted(d: Path) -> str | None:
    """Why a status file in directory `d` is no daemon's word: a symlink, or a directory
    someone other than root or us owns or may write to (they could have written it)."""
    try:
        st = os.lstat(d)
    except OSError:
        return f"{d}: no such directory; no daemon ran with this pid file"
    if not stat.S_ISDIR(st.st_mode):
        return f"{d}: not a directory (a symlink?): its status file is not trusted"
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        return (f"{d}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}: "
                "its status file is not trusted")
    return None


def human(s: dict) -> list[str]:
    if not s["running"]:
        out = [f"logban: not running ({s.get('why', 'stopped')})"]
        if s.get("pid"):
            out.append(f"  last: pid {s['pid']}, node {s.get('node')}, started {s.get('started')}"
                       + (f", stopped {s['stopped']}" if s.get("stopped") else ""))
        return out
    st = s["store"]
    out = [f"logban: running, pid {s['pid']}, up {format_duration(s['uptime'])} (since {s['started']})"
           + (f"; {s['why']}" if s.get("stalled") else ""),
           f"  node {s['node']}, firewall {s['backend']}" + (" (dry run)" if s["dry_run"] else ""),
           f"  store {st['url']}: " + ("reachable" if st["reachable"] else f"UNREACHABLE since {st['outage_since']}")]
    for src in s["sources"]:
        if src["kind"] == "journal":
            out.append(f"  journal {src['source']}: {src.get('lines_read', 0):,} lines read, lag {src.get('lag_seconds')} s"
                       + (" (waiting for journal files)" if src.get("waiting") else
                          "" if src.get("open", True) else " (journalctl not running)"))
            continue
        lag = "?" if src.get("lag_bytes") is None else f"{src['lag_bytes']:,} bytes, {src.get('lag_seconds')} s"
        out.append(f"  {src['kind']} {src['source']}: position {src.get('position')}, "
                   f"{src.get('lines_read', 0):,} lines read, lag {lag}" + ("" if src.get("open", True) else " (not open)"))
    for key in ("offences", "bans"):
        c = s.get(key)
        if c is not None:
            out.append(f"  {key}: {c['last_hour']:,} in the last hour, {c['last_day']:,} in the last day (this node)")
    a = s["active_bans"]
    out.append(f"  active bans: {a['total']:,} ({a['address_count']:,} addresses, {a['network_count']:,} networks); "
               f"clients being scored: {s['clients_scored']:,}")
    lb, le = s.get("last_ban"), s.get("last_error")
    out.append("  last ban: " + (f"{lb['target']} {lb['kind']} at {lb['time']}" + (" (dry run)" if lb.get("dry_run") else "")
                                    if lb else "none"))
    out.append("  last error: " + (f"{le['time']} {le['message']}" if le else "none"))
    return out

