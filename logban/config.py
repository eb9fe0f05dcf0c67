"""The TOML configuration: read once, validated whole, every mistake named by key."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import regex

from .errors import UsageError

DEFAULT_PATH = Path("/etc/logban/logban.toml")

_DURATION = regex.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
    return total


@dataclass
class ParseConfig:
    own_names: tuple[str, ...] = ()
    timezone: str | None = None        # for RFC 3164 stamps; None = this host's zone
    max_line: int = 8192
    match_timeout: float = 0.05


@dataclass
class Config:
    path: Path | None = None
    rule_dirs: list[Path] = field(default_factory=list)
    disable: tuple[str, ...] = ()
    parse: ParseConfig = field(default_factory=ParseConfig)


def _keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    for k in table:
        if k not in allowed:
            raise UsageError(f"{path}: unknown key {where}{k!r} (allowed: {', '.join(sorted(allowed))})")


def _strings(v, key: str, path: Path) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise UsageError(f"{path}: {key} must be a list of non-empty strings")
    return tuple(v)


def load_config(path: Path | None) -> Config:
    """The config at `path`; the default file if present; else the built-in defaults."""
    if path is None:
        if not DEFAULT_PATH.is_file():
            return Config()
        path = DEFAULT_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read config: {e}") from None
    _keys(data, {"rules", "parse"}, "", path)
    cfg = Config(path=path)
    rules = data.get("rules", {})
    _keys(rules, {"dirs", "disable"}, "rules.", path)
    cfg.rule_dirs = [Path(d) for d in _strings(rules.get("dirs", []), "rules.dirs", path)]
    cfg.disable = _strings(rules.get("disable", []), "rules.disable", path)
    p = data.get("parse", {})
    _keys(p, {"own_names", "timezone", "max_line", "match_timeout"}, "parse.", path)
    pc = cfg.parse
    pc.own_names = _strings(p.get("own_names", []), "parse.own_names", path)
    if "timezone" in p:
        tz = p["timezone"]
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise UsageError(f"{path}: parse.timezone: unknown time zone {tz!r}") from None
        pc.timezone = tz
    if "max_line" in p:
        ml = p["max_line"]
        if isinstance(ml, bool) or not isinstance(ml, int) or not 256 <= ml <= 1 << 20:
            raise UsageError(f"{path}: parse.max_line must be a whole number from 256 to 1048576")
        pc.max_line = ml
    if "match_timeout" in p:
        mt = p["match_timeout"]
        secs = parse_duration(mt, f"{path}: parse.match_timeout") if isinstance(mt, str) else mt
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not 0 < secs <= 10:
            raise UsageError(f"{path}: parse.match_timeout must be above 0 and at most 10 seconds")
        pc.match_timeout = float(secs)
    return cfg
