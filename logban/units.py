"""Durations as users write them (`90s`, `10m`, `12h`, `3d`, `2w`) and as we print them."""
from __future__ import annotations

import regex

from .errors import UsageError

_DURATION = regex.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Longer is a typo or an attack on the arithmetic (an end past year 9999 breaks every
# date format); "permanent" says forever where forever is meant.
DURATION_MAX = 100 * 365 * 86400


def parse_duration(text: str, what: str = "duration") -> float:
    """`90s`, `10m`, `12h`, `3d`, `2w`, or combinations like `1h30m`, in seconds."""
    t = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not t or pos != len(t):
        raise UsageError(f"{what}: {text!r} is not a duration (like 90s, 10m, 12h, 3d, 2w)")
    return check_duration(total, text, what)


def check_duration(secs: float, text, what: str = "duration") -> float:
    if secs != secs:
        raise UsageError(f"{what}: {text!r} is not a number")
    if not secs <= DURATION_MAX:
        raise UsageError(f"{what}: {text!r} is longer than 100 years (say \"permanent\" for forever)")
    return secs


def format_duration(secs: float | None) -> str:
    """The largest units that say it exactly enough: 90 -> 1m30s, 259200 -> 3d; None -> permanent."""
    if secs is None:
        return "permanent"
    if not isinstance(secs, (int, float)) or not abs(secs) < 1e15:
        return repr(secs)               # NaN, inf or text from a store row no logban wrote
    secs = int(round(secs))
    if secs <= 0:
        return "0s"
    out = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size:
            out.append(f"{secs // size}{unit}")
            secs %= size
        if len(out) == 2:
            break
    return "".join(out)
