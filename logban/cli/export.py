"""`logban export`: the active bans as files for other software."""
from __future__ import annotations

import sys
import time

from ..config import Config
from ..report import (
    safe,
)
from .common import _allow, _store


def cmd_export(args, cfg: Config) -> int:
    from ..export import ExportOptions, check_path, render, write
    if args.output is not None:
        check_path(args.output)             # before any work: a path that cannot be the file
    store = _store(args, cfg, readonly=True)
    o = ExportOptions(args.format, args.output, action=args.action)
    allow = _allow(cfg, store)
    bans, refused = allow.screen((b for b in store.active_bans(time.time()) if not b.dry_run),
                                 store.partners(allow))
    for target, why in refused:
        print(safe(f"logban: left out {target!r}: {why}"), file=sys.stderr)
    content = render(o, bans)
    if o.path is None:
        sys.stdout.write(content)
    elif write(o, content):
        print(safe(f"{o.path}: {len(bans):,} bans written"), file=sys.stderr)
    else:
        print(safe(f"{o.path}: unchanged"), file=sys.stderr)
    return 0
