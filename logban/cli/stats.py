"""`logban stats`: what was seen and decided over a period."""
from __future__ import annotations

import json
import time

from ..allow import AllowList
from ..config import Config
from ..report import (
    stats_human,
    stats_json,
)
from ..score import Scorer
from ..units import parse_duration
from .common import _allow, _store


def _top_offenders(store, allow: AllowList, policy, since: float | None, now: float, top: int) -> dict:
    """The store's statistics with `top` holding only real offenders: the store records the
    offences of allow-listed clients too (the scorer ignores them), so they are taken out here,
    asking the store for more rows until `top` are left. The allow-listed ones that would have
    ranked are listed under `ignored`."""
    scorer = Scorer(policy)

    def allowed(ip: str) -> bool:
        try:
            if allow.address_allowed(ip):
                return True
        except ValueError:
            return False
        if not allow.names:
            return False
        off = store.offender(scorer.target_of(ip)[0])
        return off is not None and allow.name_allowed(off.name)

    limit = top
    while True:
        s = store.stats(since, now, limit)
        rows = s["top"]
        left_out = [t for t in rows if allowed(t["ip"])]
        if len(rows) - len(left_out) >= top or len(rows) < limit:
            break
        limit = max(2 * limit, top + len(left_out) + 10)
    kept = [t for t in rows if t not in left_out][:top]
    last = kept[-1]["count"] if len(kept) == top and kept else -1
    s["top"] = kept
    s["ignored"] = {"allow_listed_top": [{"ip": t["ip"], "count": t["count"]} for t in left_out
                                         if t["count"] >= last]}
    return s


def cmd_stats(args, cfg: Config) -> int:
    since = parse_duration(args.since, "--since") if args.since else None
    now = time.time()
    s = _top_offenders(_store(args, cfg, readonly=True), _allow(cfg), cfg.policy, now - since if since is not None else None,
                       now, args.top)
    if args.json:
        print(json.dumps(stats_json(s), indent=2))
    else:
        print(stats_human(s, args.since))
    return 0
