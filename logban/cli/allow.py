"""`logban allow add|remove|list`: the live allow-list kept in the store (logban/liveallow.py)."""
from __future__ import annotations

import json
import socket
import time

from ..config import Config
from ..errors import UsageError
from ..liveallow import entries_in_force, newly_allowed, parse_entry
from ..parse import iso
from ..report import safe
from ..units import format_duration, parse_duration
from .common import _allow, _store


def cmd_allow(args, cfg: Config) -> int:
    return {"add": _add, "remove": _remove, "list": _list}[args.allow_command](args, cfg)


def _target(args) -> tuple[str, str]:
    try:
        return parse_entry(args.target, force=getattr(args, "force", False))
    except ValueError as e:
        raise UsageError(f"allow {args.allow_command}: {e}") from None


def _add(args, cfg: Config) -> int:
    target, kind = _target(args)
    now = time.time()
    expires = None
    if args.duration is not None:
        secs = parse_duration(args.duration, "--for")
        if secs <= 0:
            raise UsageError(f"--for: {args.duration!r} must be above zero")
        expires = now + secs
    store = _store(args, cfg)
    store.allow_add(target, kind, args.reason, now, expires, cfg.node or socket.gethostname())
    # Each node's daemon releases these within a second and lifts them from its kernel.
    covered = newly_allowed(_allow(cfg, store), store.active_bans(now))
    entry = {"target": target, "kind": kind, "origin": "store", "reason": args.reason, "added": iso(now),
             "until": None if expires is None else iso(expires), "covers_active_bans": covered}
    if args.json:
        print(json.dumps(entry, indent=2))
        return 0
    print(safe(f"allowed {target} ({kind}) " + ("until removed" if expires is None
                                                 else f"for {format_duration(expires - now)}")))
    if covered:
        print(safe(f"active bans it covers (each running daemon lifts them now): {', '.join(covered)}"))
    return 0


def _remove(args, cfg: Config) -> int:
    target, _ = _target(args)
    store = _store(args, cfg)
    gone = store.allow_remove(target)
    in_config = target in {*cfg.allow.addresses, *cfg.allow.hostnames}
    if args.json:
        print(json.dumps({"target": target, "removed": gone, "in_config": in_config}, indent=2))
    elif gone:
        print(safe(f"removed {target} from the live allow-list"))
    else:
        print(safe(f"{target}: not in the live allow-list; nothing removed"))
    if in_config and not args.json:
        print(safe(f"{target} stays allowed by the config ({cfg.path}): edit [allow] there"))
    return 0


def _list(args, cfg: Config) -> int:
    store = _store(args, cfg, readonly=True)
    now = time.time()
    where = f"config {cfg.path}" if cfg.path else "config"
    rows = [{"target": t, "kind": kind, "origin": "config", "source": where, "reason": "", "added": None,
             "until": None, "added_by": None}
            for kind, t in [*(("network" if "/" in a else "address", a) for a in cfg.allow.addresses),
                            *(("name", n) for n in cfg.allow.hostnames)]]
    rows += [{"target": e.target, "kind": e.kind, "origin": "store", "source": store.where(store.url),
              "reason": e.reason, "added": iso(e.created), "until": None if e.expires is None else iso(e.expires),
              "added_by": e.added_by} for e in entries_in_force(store.allow_entries(now), now)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("the allow-list is empty (loopback and this host's own addresses are always allowed)")
        return 0
    for r in rows:
        until = "" if r["until"] is None else f" until {r['until']}"
        why = f" ({r['reason']})" if r["reason"] else ""
        print(safe(f"{r['target']:<40} {r['kind']:<8} {r['origin']}{until}{why}"))
    return 0
