"""`logban report`: the period's offences and bans as a page with charts, or as text."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..config import Config
from ..errors import UsageError
from ..units import parse_duration
from .common import _allow, _store


def cmd_report(args, cfg: Config) -> int:
    from ..digest import collect, render_html, render_text
    period = parse_duration(args.since, "--since")
    if period <= 0:
        raise UsageError(f"--since: {args.since!r} is not a period (like 24h, 7d)")
    if args.output is not None and not args.output.parent.is_dir():
        raise UsageError(f"-o: {args.output.parent}: no such directory")
    if args.output is not None and args.output.is_dir():
        raise UsageError(f"-o: {args.output}: is a directory")
    now = time.time()
    d = collect(_store(args, cfg, readonly=True), _allow(cfg), since=now - period, until=now, node=args.node,
                top=args.top)
    page = render_text(d, now) if args.format == "text" else render_html(d, now)
    if args.output is None:
        sys.stdout.write(page)
    else:
        _replace(args.output, page)
    return 0


def _replace(path: Path, text: str) -> None:
    """Written beside and renamed over: a reader (a web server, a mailer) never sees half a page."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
