"""The TOML configuration: read once, validated whole, every mistake named by key."""
from __future__ import annotations

import ipaddress
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .allow import check_name_pattern, parse_network
from .errors import UsageError
from .export import FORMATS, ExportOptions
from .firewall import ACTIONS, BACKENDS, FirewallOptions
from .journal import JournalSpec, Selection
from .rules import shipped_rules_dir
from .score import DEFAULT_DURATIONS, DEFAULT_HORIZONS, Horizon, Policy
from .units import check_duration, parse_duration

DEFAULT_PATH = Path("/etc/logban/logban.toml")
BIG_SENDERS = Path("senders/bigsenders.toml")       # beside the rule packs


def big_sender_entries(path: Path | None = None) -> dict[str, tuple[str, ...]]:
    """The shipped list of big senders' outbound farms: id -> name patterns."""
    path = path or shipped_rules_dir() / BIG_SENDERS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"{path}: cannot read the big senders list: {e}") from None
    out: dict[str, tuple[str, ...]] = {}
    for i, e in enumerate(data.get("sender", [])):
        sid, names = e.get("id") if isinstance(e, dict) else None, e.get("names") if isinstance(e, dict) else None
        if not isinstance(sid, str) or not sid or sid in out:
            raise UsageError(f"{path}: sender[{i}]: id must be a unique non-empty string")
        out[sid] = _strings(names, f"sender {sid}: names", path)
        for n in out[sid]:
            try:
                check_name_pattern(n)
            except ValueError as err:
                raise UsageError(f"{path}: sender {sid}: {err}") from None
    return out


def _shipped_big_senders() -> tuple[str, ...]:
    return tuple(n for names in big_sender_entries().values() for n in names)

@dataclass
class ParseConfig:
    own_names: tuple[str, ...] = ()
    timezone: str | None = None        # for RFC 3164 stamps; None = this host's zone
    max_line: int = 8192
    match_timeout: float = 0.05
    # How far a log stamp may run ahead of this host's clock (a sender's clock off a little).
    # Beyond it, the daemon counts the offence when it read it; `scan --apply` leaves it out.
    clock_skew: float = 300.0


@dataclass
class AllowConfig:
    addresses: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()
    resolve: bool = False               # forward-confirmed reverse lookups by logban itself
    resolve_timeout: float = 2.0


@dataclass
class DaemonConfig:
    follow: list[tuple[Path, str | None]] = field(default_factory=list)   # (path, rule pack or None: auto)
    journals: list[JournalSpec] = field(default_factory=list)             # [[follow]] journal = true
    journal_if_missing: set[Path] = field(default_factory=set)   # followed paths to replace by the journal if absent
    poll: bool | None = None            # None: inotify where it works, polling elsewhere
    from_start: bool = False            # a file met for the first time: read what it holds already
    sync_interval: float = 600.0        # full firewall reconcile
    pid_file: Path | None = None
    metrics: str | None = None          # "127.0.0.1:9466": Prometheus endpoint; None: off
    offline_buffer: int = 1_000_000     # offences kept while the store is away; then reading pauses


@dataclass
class Config:
    path: Path | None = None
    rule_dirs: list[Path] = field(default_factory=list)
    disable: tuple[str, ...] = ()
    parse: ParseConfig = field(default_factory=ParseConfig)
    database: str | None = None
    node: str | None = None
    dry_run: bool = False
    policy: Policy = field(default_factory=Policy)
    allow: AllowConfig = field(default_factory=AllowConfig)
    big_senders: tuple[str, ...] = field(default_factory=_shipped_big_senders)
    retention: float = 30 * 86400.0     # offences kept this long
    firewall: FirewallOptions = field(default_factory=FirewallOptions)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    exports: list[ExportOptions] = field(default_factory=list)


def _duration(v, key: str, path: Path, *, permanent: bool = False, zero: bool = False,
              least: float = 0.0) -> float | None:
    """A duration value: "12h" (or seconds as a number); "permanent" where allowed; `least`:
    the shortest that makes sense (below it the value is a typo, not a choice)."""
    if permanent and v == "permanent":
        return None
    if isinstance(v, str):
        secs = parse_duration(v, f"{path}: {key}")
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        secs = check_duration(float(v), v, f"{path}: {key}")
    else:
        raise UsageError(f"{path}: {key} must be a duration like \"12h\"" + (' or "permanent"' if permanent else ""))
    if secs < 0 or (secs == 0 and not zero):
        raise UsageError(f"{path}: {key} must be a duration above zero, not {v!r}")
    if secs < least:
        raise UsageError(f"{path}: {key} must be at least {least:g}s, not {v!r}")
    return secs


def _number(v, key: str, path: Path, lo: float, hi: float, *, whole: bool = False, lo_open: bool = False) -> float:
    ok = isinstance(v, int if whole else (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < lo or v > hi or (lo_open and v == lo):
        what = "a whole number" if whole else "a number"
        raise UsageError(f"{path}: {key} must be {what} {'above' if lo_open else 'from'} {lo:g}"
                         f"{'' if hi == float('inf') else f' to {hi:g}'}, not {v!r}")
    return v


def _bool(v, key: str, path: Path) -> bool:
    if not isinstance(v, bool):
        raise UsageError(f"{path}: {key} must be true or false")
    return v


def _policy(data: dict, path: Path) -> Policy:
    sc = data.get("score", {})
    _keys(sc, {"threshold", "window", "half_life", "max_tracked", "transient", "verified_transient", "horizons"},
          "score.", path)
    bn = data.get("ban", {})
    _keys(bn, {"default", "durations", "rules", "escalate", "factor", "max", "lookback",
               "ipv4_prefix", "ipv6_prefix", "subnet_bans"}, "ban.", path)
    kw: dict = {}
    if "threshold" in sc:
        kw["threshold"] = float(_number(sc["threshold"], "score.threshold", path, 0, 1e9, lo_open=True))
    if "window" in sc and "half_life" in sc:
        raise UsageError(f"{path}: score.window and score.half_life: give one of them, not both")
    if "window" in sc:
        kw["window"] = _duration(sc["window"], "score.window", path)
    if "half_life" in sc:
        kw["window"], kw["half_life"] = None, _duration(sc["half_life"], "score.half_life", path)
    if "max_tracked" in sc:
        kw["max_tracked"] = int(_number(sc["max_tracked"], "score.max_tracked", path, 100, 1e8, whole=True))
    for k in ("transient", "verified_transient"):
        if k in sc:
            kw[k] = float(_number(sc[k], f"score.{k}", path, 0, 1))
    if "horizons" in sc:
        kw["horizons"] = _horizons(sc["horizons"], path)
    if "default" in bn:
        kw["default_duration"] = _duration(bn["default"], "ban.default", path)
    durations = dict(DEFAULT_DURATIONS)
    table = bn.get("durations", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: ban.durations must be a table of kind = duration")
    for kind, v in table.items():
        if kind not in DEFAULT_DURATIONS:
            raise UsageError(f"{path}: ban.durations: unknown kind {kind!r} (one of: {', '.join(sorted(DEFAULT_DURATIONS))})")
        durations[kind] = _duration(v, f"ban.durations.{kind}", path, permanent=True)
    kw["durations"] = durations
    rules = bn.get("rules", {})
    if not isinstance(rules, dict):
        raise UsageError(f"{path}: ban.rules must be a table of rule id = duration")
    kw["rule_durations"] = {rid: _duration(v, f"ban.rules.{rid}", path, permanent=True) for rid, v in rules.items()}
    if "escalate" in bn:
        kw["escalate"] = _bool(bn["escalate"], "ban.escalate", path)
    if "factor" in bn:
        kw["factor"] = float(_number(bn["factor"], "ban.factor", path, 1, 100))
    if "max" in bn:
        kw["max_duration"] = _duration(bn["max"], "ban.max", path)
    if "lookback" in bn:
        kw["lookback"] = _duration(bn["lookback"], "ban.lookback", path, zero=True)
    if "ipv4_prefix" in bn:
        kw["ipv4_prefix"] = int(_number(bn["ipv4_prefix"], "ban.ipv4_prefix", path, 8, 32, whole=True))
    if "ipv6_prefix" in bn:
        kw["ipv6_prefix"] = int(_number(bn["ipv6_prefix"], "ban.ipv6_prefix", path, 16, 128, whole=True))
    if "subnet_bans" in bn:
        kw["subnet_bans"] = int(_number(bn["subnet_bans"], "ban.subnet_bans", path, 0, 1 << 16, whole=True))
        if kw["subnet_bans"] == 1:
            raise UsageError(f"{path}: ban.subnet_bans must be 0 (off) or 2 or more: 1 would ban a whole network for one address")
    return Policy(**kw)


def _horizons(table, path: Path) -> tuple[Horizon, ...]:
    """[score.horizons.NAME] tables: change a default horizon (hour, day, week) or add one;
    threshold = 0 switches one off."""
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise UsageError(f"{path}: score.horizons must hold tables ([score.horizons.day] span = ..., threshold = ...)")
    got = {h.name: h for h in DEFAULT_HORIZONS}
    for name, t in table.items():
        where = f"score.horizons.{name}."
        _keys(t, {"span", "threshold", "repeat", "transient"}, where, path)
        old = got.get(name)
        if old is None and ("span" not in t or "threshold" not in t):
            raise UsageError(f"{path}: {where}span and {where}threshold: a new horizon needs both")
        span = _duration(t["span"], where + "span", path) if "span" in t else old.span
        thr = float(_number(t["threshold"], where + "threshold", path, 0, 1e9)) if "threshold" in t else old.threshold
        repeat = _bool(t["repeat"], where + "repeat", path) if "repeat" in t else (old.repeat if old else False)
        tr = float(_number(t["transient"], where + "transient", path, 0, 1)) if "transient" in t else \
            (old.transient if old else 1.0)
        got[name] = Horizon(name, span, thr, repeat, tr)
    return tuple(sorted((h for h in got.values() if h.threshold > 0), key=lambda h: h.span))


def _big_senders(data: dict, path: Path) -> tuple[str, ...]:
    """[big_senders]: the shipped list, less the entries switched off, plus the admin's patterns."""
    b = data.get("big_senders", {})
    if not isinstance(b, dict):
        raise UsageError(f"{path}: big_senders must be a table ([big_senders])")
    _keys(b, {"enabled", "disable", "names"}, "big_senders.", path)
    entries = big_sender_entries() if _bool(b.get("enabled", True), "big_senders.enabled", path) else {}
    off = _strings(b.get("disable", []), "big_senders.disable", path)
    for sid in off:
        if entries and sid not in entries:
            raise UsageError(f"{path}: big_senders.disable: no shipped entry {sid!r} (have: {', '.join(entries)})")
    names = _strings(b.get("names", []), "big_senders.names", path)
    for n in names:
        try:
            check_name_pattern(n)
        except ValueError as e:
            raise UsageError(f"{path}: big_senders.names: {e}") from None
    return tuple(n for sid, ns in entries.items() if sid not in off for n in ns) + names


def _allow(data: dict, path: Path) -> AllowConfig:
    a = data.get("allow", {})
    _keys(a, {"addresses", "hostnames", "resolve", "resolve_timeout"}, "allow.", path)
    ac = AllowConfig(addresses=_strings(a.get("addresses", []), "allow.addresses", path),
                     hostnames=_strings(a.get("hostnames", []), "allow.hostnames", path))
    for n in ac.addresses:
        try:
            parse_network(n)
        except ValueError as e:
            raise UsageError(f"{path}: allow.addresses: {e}") from None
    for h in ac.hostnames:
        try:
            check_name_pattern(h)
        except ValueError as e:
            raise UsageError(f"{path}: allow.hostnames: {e}") from None
    if "resolve" in a:
        ac.resolve = _bool(a["resolve"], "allow.resolve", path)
    if "resolve_timeout" in a:
        ac.resolve_timeout = _duration(a["resolve_timeout"], "allow.resolve_timeout", path, least=0.1)
    return ac


def _keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    for k in table:
        if k not in allowed:
            # The key as the user wrote it (safe() escapes control characters when printed).
            raise UsageError(f"{path}: unknown key {where}{k} (allowed: {', '.join(sorted(allowed))})")


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
    except OSError as e:            # a directory, no permission: in words, without "[Errno N]"
        raise UsageError(f"{path}: cannot read config: {(e.strerror or str(e)).lower()}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: cannot read config: {e}") from None
    _keys(data, {"rules", "parse", "database", "node", "dry_run", "score", "ban", "allow", "store", "firewall",
                 "daemon", "follow", "export", "big_senders"}, "", path)
    cfg = Config(path=path)
    rules = data.get("rules", {})
    _keys(rules, {"dirs", "disable"}, "rules.", path)
    cfg.rule_dirs = [Path(d) for d in _strings(rules.get("dirs", []), "rules.dirs", path)]
    cfg.disable = _strings(rules.get("disable", []), "rules.disable", path)
    p = data.get("parse", {})
    _keys(p, {"own_names", "timezone", "max_line", "match_timeout", "clock_skew"}, "parse.", path)
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
    if "clock_skew" in p:
        pc.clock_skew = _duration(p["clock_skew"], "parse.clock_skew", path, zero=True)
        if pc.clock_skew > 86400:
            raise UsageError(f"{path}: parse.clock_skew must be at most a day, not {p['clock_skew']!r}")
    for k in ("score", "ban", "allow", "store", "firewall", "daemon"):
        if not isinstance(data.get(k, {}), dict):
            raise UsageError(f"{path}: {k} must be a table ([{k}])")
    if "database" in data:
        if not isinstance(data["database"], str) or not data["database"]:
            raise UsageError(f"{path}: database must be a database URL (like sqlite:////var/lib/logban/logban.db)")
        cfg.database = data["database"]
    if "node" in data:
        if not isinstance(data["node"], str) or not data["node"].strip():
            raise UsageError(f"{path}: node must be a non-empty name")
        cfg.node = data["node"]
    if "dry_run" in data:
        cfg.dry_run = _bool(data["dry_run"], "dry_run", path)
    cfg.policy = _policy(data, path)
    cfg.allow = _allow(data, path)
    cfg.big_senders = _big_senders(data, path)
    st = data.get("store", {})
    _keys(st, {"retention"}, "store.", path)
    if "retention" in st:
        cfg.retention = _duration(st["retention"], "store.retention", path)
    cfg.firewall = firewall_options(data.get("firewall", {}), path)
    cfg.daemon = _daemon(data, path)
    cfg.exports = export_options(data.get("export", []), path)
    return cfg


def _journal(f: dict, key: str, path: Path, mta: str | None) -> JournalSpec:
    """A [[follow]] entry that names the journal: journal = true, directory, identifiers, units,
    users."""
    if f.get("journal") is not True:
        raise UsageError(f"{path}: {key}journal = true goes with directory, identifiers and units")
    if "path" in f:
        raise UsageError(f"{path}: {key}path and journal = true: one [[follow]] entry is a file or the journal")
    d = f.get("directory")
    if d is not None and (not isinstance(d, str) or not d.startswith("/")):
        raise UsageError(f"{path}: {key}directory must be an absolute directory path")
    sel = Selection()
    if "identifiers" in f:
        sel = Selection(_strings(f["identifiers"], f"{key}identifiers", path), sel.units)
    if "units" in f:
        sel = Selection(sel.identifiers, _strings(f["units"], f"{key}units", path))
    if "users" in f:
        sel = Selection(sel.identifiers, sel.units, _strings(f["users"], f"{key}users", path))
    return JournalSpec(Path(d) if d else None, mta, sel)


def _daemon(data: dict, path: Path) -> DaemonConfig:
    d = data.get("daemon", {})
    _keys(d, {"poll", "from_start", "sync_interval", "pid_file", "metrics", "offline_buffer"}, "daemon.", path)
    dc = DaemonConfig()
    follow = data.get("follow", [])
    if not isinstance(follow, list) or not all(isinstance(f, dict) for f in follow):
        raise UsageError(f"{path}: follow must be a list of tables ([[follow]] path = ..., mta = ...)")
    for i, f in enumerate(follow):
        _keys(f, {"path", "mta", "journal", "directory", "identifiers", "units", "users",
                  "journal_if_missing"}, f"follow[{i}].", path)
        p, mta = f.get("path"), f.get("mta", "auto")
        if not isinstance(mta, str) or not mta:
            raise UsageError(f"{path}: follow[{i}].mta must be a rule pack name (postfix, sendmail, qmail) or \"auto\"")
        if any(k in f for k in ("journal", "directory", "identifiers", "units", "users")):
            dc.journals.append(_journal(f, f"follow[{i}].", path, None if mta == "auto" else mta))
            continue
        if not isinstance(p, str) or not p.startswith("/"):
            raise UsageError(f"{path}: follow[{i}].path must be an absolute file path")
        dc.follow.append((Path(p), None if mta == "auto" else mta))
        if _bool(f.get("journal_if_missing", False), f"follow[{i}].journal_if_missing", path):
            dc.journal_if_missing.add(Path(p))
    if "poll" in d:
        dc.poll = _bool(d["poll"], "daemon.poll", path)
    if "from_start" in d:
        dc.from_start = _bool(d["from_start"], "daemon.from_start", path)
    if "sync_interval" in d:
        dc.sync_interval = _duration(d["sync_interval"], "daemon.sync_interval", path, least=10)
    if "pid_file" in d:
        if not isinstance(d["pid_file"], str) or not d["pid_file"].startswith("/"):
            raise UsageError(f"{path}: daemon.pid_file must be an absolute path")
        dc.pid_file = Path(d["pid_file"])
    if "offline_buffer" in d:
        dc.offline_buffer = int(_number(d["offline_buffer"], "daemon.offline_buffer", path, 1, 1e9, whole=True))
    if "metrics" in d:
        m = d["metrics"]
        host, _, port = m.rpartition(":") if isinstance(m, str) else ("", "", "")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"{path}: daemon.metrics must be host:port, like \"127.0.0.1:9466\"")
        dc.metrics = m
    return dc


def firewall_options(table: dict, path) -> FirewallOptions:
    """The [firewall] table, checked key by key."""
    _keys(table, {"backend", "action", "ports", "forward"}, "firewall.", path)
    backend = table.get("backend", "auto")
    if backend not in BACKENDS:
        raise UsageError(f"{path}: firewall.backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    action = table.get("action", "drop")
    if action not in ACTIONS:
        raise UsageError(f"{path}: firewall.action must be drop or reject, not {action!r}")
    ports = table.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                                              for p in ports):
        raise UsageError(f"{path}: firewall.ports must be a list of TCP ports (like [25, 465, 587])")
    forward = _bool(table["forward"], "firewall.forward", path) if "forward" in table else False
    return FirewallOptions(backend, action, tuple(sorted(set(ports))), forward)


def export_options(tables: list, path) -> list[ExportOptions]:
    """The [[export]] tables, checked key by key."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{path}: export must be a list of tables ([[export]] format = ..., path = ...)")
    out = []
    for i, t in enumerate(tables):
        where = f"export[{i}]."
        _keys(t, {"format", "path", "action", "text", "a_record"}, where, path)
        fmt, p = t.get("format"), t.get("path")
        if fmt not in FORMATS:
            raise UsageError(f"{path}: {where}format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if not isinstance(p, str) or not p.startswith("/"):
            raise UsageError(f"{path}: {where}path must be an absolute file path")
        kw = {}
        for k in ("action", "text", "a_record"):
            if k in t:
                if not isinstance(t[k], str) or not t[k].strip() or "\n" in t[k]:
                    raise UsageError(f"{path}: {where}{k} must be a one-line string")
                kw[k] = t[k]
        if "a_record" in kw:
            try:
                ipaddress.IPv4Address(kw["a_record"])
            except ValueError:
                raise UsageError(f"{path}: {where}a_record must be an IPv4 address like 127.0.0.2") from None
        if "text" in kw:
            try:
                kw["text"].format(kind="", target="", until="")
            except (KeyError, IndexError, ValueError) as e:
                raise UsageError(f"{path}: {where}text: only {{kind}}, {{target}} and {{until}} may be "
                                 f"used ({e})") from None
        out.append(ExportOptions(fmt, Path(p), **kw))
    return out
