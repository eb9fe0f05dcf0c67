"""`logban list`, `ban`, `unban`, `show`: the bans by hand."""
from __future__ import annotations

import ipaddress
import json
import time
from datetime import UTC, datetime

from ..allow import ban_target
from ..config import Config
from ..errors import UsageError
from ..parse import iso
from ..report import (
    ban_json,
    bans_table,
    safe,
    show_human,
)
from ..rules import KINDS
from ..score import Decision, Scorer, horizon_totals
from ..units import format_duration, parse_duration
from .common import (
    _allow,
    _check_backend,
    _enforce,
    _node,
    _related,
    _related_bans,
    _store,
    parse_target,
)


def cmd_list(args, cfg: Config) -> int:
    store = _store(args, cfg, readonly=True)
    now = time.time()
    bans = store.bans() if args.all else store.active_bans(now)
    if args.json:
        print(json.dumps([ban_json(b) for b in bans], indent=2))
    else:
        print(bans_table(bans, now, args.all))
    return 0


# A manual ban this wide drops a large part of the Internet: --force says it is meant.
WIDE = {4: 8, 6: 32}


def _manual_target(text: str, force: bool) -> str:
    """The target of `logban ban`: strict as the config (no host bits), not too wide unless forced."""
    try:        # never a target that cuts the host off (loopback, multicast, ...), nor a sloppy spelling
        target = ban_target(text)
    except ValueError as e:
        hint = ""
        if "host bits" in str(e):
            hint = f" (the network is {ipaddress.ip_network(text.strip(), strict=False)})"
        raise UsageError(f"ban {text!r}: not a ban target: {e}{hint}") from None
    net = ipaddress.ip_network(target)
    if net.prefixlen <= WIDE[net.version] and not force:
        raise UsageError(f"ban {target}: a /{net.prefixlen} holds {net.num_addresses:,} addresses; "
                         f"--force bans a /{WIDE[net.version]} or wider")
    return target


def cmd_ban(args, cfg: Config) -> int:
    target = _manual_target(args.target, args.force)
    if args.duration is None:
        duration = cfg.policy.base_duration("manual")
    elif args.duration.strip() == "permanent":
        duration = None
    else:
        duration = parse_duration(args.duration, "--for")
        if duration <= 0:
            raise UsageError(f"--for: {args.duration!r} must be above zero")
    _check_backend(args, cfg, dry_run=args.dry_run)         # before anything is recorded
    store = _store(args, cfg)
    allow = _allow(cfg, store)
    if allow.target_allowed(target):
        raise UsageError(f"{target} is allow-listed (allow.addresses, `logban allow`, loopback or this host's own "
                         "address): not banned")
    _, refused = allow.screen([Decision(target, "manual", "", 0.0, 0.0, None, 1, False, "")], store.partners(allow))
    if refused:
        raise UsageError(f"{target}: not banned: {refused[0][1]}")
    now = time.time()
    scorer = Scorer(cfg.policy, allow)
    scorer.history = store.history(real_only=not (cfg.dry_run or args.dry_run), targets=[target])
    _, count, _ = scorer.duration(target, "manual", "", now)
    reason = args.reason or "banned by hand"
    d = Decision(target, "manual", "", 0.0, now, duration, count, False, reason)
    dry = cfg.dry_run or args.dry_run
    store.ban(d, node=_node(args, cfg), dry_run=dry, now=now)
    note = _enforce(args, cfg, store, [target], dry_run=args.dry_run, allow=allow)
    if args.json:
        print(json.dumps({"target": target, "kind": "manual", "reason": reason, "since": iso(now),
                          "until": None if duration is None else iso(now + duration), "count": count,
                          "dry_run": dry, "firewall": note}, indent=2))
    else:
        print(f"banned {target} for {format_duration(duration)}" + (" (dry run)" if dry else ""))
        print(note)
    return 0


def parse_since(text: str, now: float) -> float:
    """`--since`: a duration back from now (2h, 3d) or an ISO 8601 time (UTC unless it says)."""
    try:
        return now - parse_duration(text, "--since")
    except UsageError:
        pass
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since: {text!r} is neither a duration (like 2h, 3d) nor an ISO 8601 time "
                         "(like 2026-05-01T12:00)") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def bulk_filter(args, now: float):
    """The active bans `unban --all/--kind/--node/--since` lifts: a predicate on a ban row."""
    kinds = set(args.kind or ())
    bad = sorted(kinds - {*KINDS, "manual"})
    if bad:
        raise UsageError(f"--kind: no kind {bad[0]!r} (kinds: {', '.join(sorted({*KINDS, 'manual'}))})")
    nodes = set(args.node or ())
    since = parse_since(args.since, now) if args.since else None
    return lambda b: ((not kinds or b.kind in kinds) and (not nodes or b.node in nodes)
                      and (since is None or (b.created is not None and b.created >= since)))


def _unban_bulk(args, cfg: Config) -> int:
    now = time.time()
    keep = bulk_filter(args, now)           # checked before anything changes
    _check_backend(args, cfg, lifting=True)
    store = _store(args, cfg)
    lifted = [b for b in store.active_bans(now) if keep(b)]
    if lifted:
        store.release_many([b.target for b in lifted], "unban", now)
    # One sync: every element lifted in one kernel batch.
    note = (_enforce(args, cfg, store, lifting=True) if any(not b.dry_run for b in lifted)
            else "firewall: nothing to lift")
    if args.json:
        print(json.dumps({"unbanned": [{"target": b.target, "kind": b.kind, "node": b.node, "since": iso(b.created),
                                        "dry_run": bool(b.dry_run)} for b in lifted],
                          "count": len(lifted), "firewall": note}, indent=2))
        return 0
    for b in lifted:
        print(safe(f"unbanned {b.target} ({b.kind}, node {b.node or '-'}, since {iso(b.created)})"
                   + (" (dry run)" if b.dry_run else "")))
    print(f"{len(lifted)} ban(s) lifted" if lifted else "no active ban matches")
    print(note)
    return 0


def cmd_unban(args, cfg: Config) -> int:
    bulk = args.all or args.kind or args.node or args.since
    if args.targets and bulk:
        raise UsageError("unban: give TARGETs, or --all/--kind/--node/--since, not both")
    if bulk:
        return _unban_bulk(args, cfg)
    if not args.targets:
        raise UsageError("unban: give TARGET..., or --all, --kind, --node or --since (see 'logban unban --help')")
    targets = [parse_target(t) for t in args.targets]      # all checked before anything changes
    _check_backend(args, cfg)
    store = _store(args, cfg)
    now = time.time()
    policy = cfg.policy
    results, touched, in_kernel = [], {}, False
    for t in targets:
        active = _related_bans(store, t, now)
        hit = list(active)
        scored = Scorer(policy).target_of(t)[0] if "/" not in t else t
        done = store.release(dict.fromkeys([*hit, t, scored]), "unban", now)
        lifted = [x for x in hit if done.get(x)]
        in_kernel |= any(not active[x].dry_run for x in lifted)
        touched |= dict.fromkeys(lifted)
        results.append({"target": t, "lifted": lifted, "score_cleared": True})
    # The kernel is touched only to lift something it may hold (no table is made for nothing).
    note = _enforce(args, cfg, store, list(touched), lifting=True) if in_kernel else "firewall: nothing to lift"
    if args.json:
        print(json.dumps({"unbanned": results, "firewall": note}, indent=2))
        return 0
    for r in results:
        print(f"unbanned {r['target']}: lifted {', '.join(r['lifted'])}; score cleared" if r["lifted"]
              else f"{r['target']}: not banned; score cleared")
    print(note)
    return 0


def _horizons(store, cfg: Config, scored: str, off, banned_before: bool, now: float) -> list[dict]:
    """Each horizon's total now and its threshold, from the offences recorded since the last reset."""
    from ..engine import recorded_reply
    from ..parse import Clock, Offence
    p = cfg.policy
    since = max(now - p.horizon, off.reset_at if off is not None else 0.0)
    clock = Clock()
    offences = [Offence(r.time, r.ip, r.mta, r.rule, r.kind, r.score, r.file, r.line, name=r.name,
                        reply=recorded_reply(r.text, clock)) for r in store.offences_of([scored], [], 100_000)[1]
                if r.time > since]
    totals = horizon_totals(p, offences, now, banned_before)
    spans = {"burst": p.burst, **{h.name: h.span for h in p.horizons}}
    limits = {"burst": p.threshold, **{h.name: h.threshold for h in p.horizons}}
    return [{"horizon": k, "span": format_duration(spans[k]), "total": round(v, 3), "threshold": limits[k]}
            for k, v in totals.items()]


def cmd_show(args, cfg: Config) -> int:
    target = parse_target(args.target)
    store = _store(args, cfg, readonly=True)
    now = time.time()
    scored = Scorer(cfg.policy).target_of(target)[0] if "/" not in target else target
    every = store.bans()
    related = set(_related(target, {b.target for b in every}))
    bans = [b for b in every if b.target in related]
    from ..store import kind_names
    off = store.offender(scored)
    ips = [target] if "/" not in target else []
    total, recent = store.offences_of([scored, target], ips, args.offences)
    active = [b for b in bans if b.released is None and (b.expires is None or b.expires > now)]
    allow = _allow(cfg)
    data = {
        "target": target, "scored_as": scored, "banned": bool(active),
        "offender": None if off is None else {
            "score": off.score, "score_time": iso(off.score_time) if off.score_time else None,
            "first_seen": iso(off.first_seen), "last_seen": iso(off.last_seen), "offences": off.offences,
            "kinds": kind_names(off.kinds), "name": off.name,
            "reset_at": iso(off.reset_at) if off.reset_at else None},
        "bans": [ban_json(b) for b in bans],
        "offences": {"total": total, "recent": [
            {"time": iso(r.time), "ip": r.ip, "mta": r.mta, "rule": r.rule, "kind": r.kind, "score": r.score,
             "node": r.node, "file": r.file, "line": r.line, "text": r.text} for r in recent]},
        "threshold": cfg.policy.threshold,
        "big_sender": allow.big_sender(off.name) if off is not None else None,
        "horizons": _horizons(store, cfg, scored, off, bool(bans), now),
    }
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(show_human(data, bans, now))
    return 0
