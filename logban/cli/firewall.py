"""`logban firewall status|sync|teardown`."""
from __future__ import annotations

import json
import sys
import time

from ..config import Config
from ..errors import UsageError
from ..firewall import plan
from ..report import (
    firewall_human,
    safe,
)
from .common import _firewall, _store


def cmd_firewall(args, cfg: Config) -> int:
    store = _store(args, cfg, readonly=args.firewall_command == "status")
    fw = _firewall(args, cfg, store)
    b = fw.backend
    if args.firewall_command == "teardown":
        # A dry run too: dry run means adding nothing, not forgetting what is in the kernel.
        b.teardown()
        if args.json:
            print(json.dumps({"backend": b.name, "removed": fw.has_backend}, indent=2))
        else:
            print(f"{b.name}: removed what logban created" + ("" if fw.has_backend else " (nothing: no firewall backend)"))
        return 0
    if args.firewall_command == "sync":
        if not fw.has_backend:
            raise UsageError("firewall sync: no firewall backend (not root, or backend none)")
        p = fw.sync()
        if args.json:
            print(json.dumps({"backend": b.name, "dry_run": fw.dry_run, "added": sorted(p.missing),
                              "removed": sorted(p.unknown), "refreshed": sorted(p.stale),
                              "refused": [{"target": t, "why": w} for t, w in fw.refused]}, indent=2))
            return 0
        print(f"{b.name}: {len(p.missing)} missing added, {len(p.unknown)} unknown removed, "
              f"{len(p.stale)} timeouts refreshed" + (" (dry run: nothing added)" if fw.dry_run else ""))
        for target, why in fw.refused:
            print(safe(f"logban: not enforced here: ban of {target!r}: {why}"), file=sys.stderr)
        return 0
    now = time.time()
    active = store.active_bans(now)
    status = {"backend": b.name, "enforcing": fw.enforcing, "dry_run": fw.dry_run, "kernel_timeouts": b.kernel_timeouts,
              "bans_active": len(active), "bans_dry_run": sum(1 for x in active if x.dry_run)}
    if fw.has_backend:
        want, have = fw.want_and_have(now)
        p = plan(want, have)
        status |= b.describe() | {
            "elements": {"ipv4": sum(1 for t in have if ":" not in t), "ipv6": sum(1 for t in have if ":" in t)},
            "drift": {"missing": len(p.missing), "unknown": len(p.unknown), "stale": len(p.stale)},
            "drift_sample": {"missing": p.missing[:10], "unknown": p.unknown[:10], "stale": p.stale[:10]},
            # store bans this node will not enforce (allow-listed here, or no valid target)
            "refused": len(fw.refused), "refused_sample": [{"target": t, "why": w} for t, w in fw.refused[:10]]}
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(firewall_human(status))
    return 0
