"""The main process's share of `scan --apply` at a million distinct offenders, in process
and without the parse workers, the writer or the database: the scorer (`Scorer.count`),
the report's allow filter and summary, and the scores a flush records. CPU seconds, best
of three: on a shared machine they move far less than the wall time of the whole scan.

    PYTHONPATH=<checkout> python3 bench/main_stage_bench.py [N]

Runs against older checkouts too (A/B): where the scorer cannot tell the report's filter
what it knows, the filter reads each address itself, as it did then.
"""
from __future__ import annotations

import gc
import sys
import time

from logban.allow import AllowList
from logban.parse import Offence
from logban.report import AllowFilter, ScanSummary
from logban.score import Policy, Scorer

BATCH = 8_333           # about what the workers hand the main process at a time


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    gc.set_threshold(1_000_000, 20, 100)        # as scan sets it
    t0 = time.time() - 3600
    offs = [Offence(t0 + i * 3600 / n, f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::{1 + i % 7:x}", "postfix",
                    "postfix-sasl", "auth_failed", 1.0, "mail.log", i + 1, b"x" * 120) for i in range(n)]
    allow = AllowList()
    best: dict[str, float] = {}
    for _ in range(3):
        scorer = Scorer(Policy(), allow)
        lately = getattr(scorer, "allowed_lately", None)
        keep = AllowFilter(allow) if lately is None else AllowFilter(allow, lately)
        summary = ScanSummary()
        spent = dict.fromkeys(("count", "report", "scores"), 0.0)
        for b in range(0, n, BATCH):
            batch = offs[b:b + BATCH]
            c0 = time.process_time()
            kept = [(o, t) for o in batch if (t := scorer.count(o)[0]) is not None]
            c1 = time.process_time()
            summary.add(keep(batch))
            c2 = time.process_time()
            scorer.scores({t: o.time for o, t in kept})
            c3 = time.process_time()
            spent["count"] += c1 - c0
            spent["report"] += c2 - c1
            spent["scores"] += c3 - c2
        spent["total"] = sum(spent.values())
        best = {k: min(best.get(k, v), v) for k, v in spent.items()}
    print(f"{n:,} distinct offenders, CPU s: " + "  ".join(f"{k} {v:.2f}" for k, v in best.items()))


if __name__ == "__main__":
    main()
