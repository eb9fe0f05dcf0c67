"""What the commands share: config to stages, log sources to a parser, targets from arguments."""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..allow import AllowList, Resolver, canonical_num, parse_network
from ..config import Config
from ..errors import FirewallError, UsageError
from ..parse import Clock, Offence, Parser, canonical_ip
from ..report import (
    safe,
)
from ..rules import RuleSet, load_rules
from ..score import Scorer
from ..sources import READ_ERRORS, Source, chunks, open_source, read_error

if TYPE_CHECKING:
    from ..jobs import Pool        # scan's: a ban or an unban loads no multiprocessing


def _ruleset(cfg: Config, mta: list[str] | None = None, extra: list[Path] = ()) -> RuleSet:
    return load_rules(cfg.rule_dirs + list(extra), disable=cfg.disable,
                      own_names=cfg.parse.own_names, only_packs=tuple(mta or ()),
                      disable_key=f"{cfg.path or 'config'}: rules.disable")


def _parser(cfg: Config, rules: RuleSet, mta: list[str] | None, scorer: Scorer, **kw) -> Parser:
    """Rate rules count per the scorer's target, never for an allow-listed client."""
    return Parser(rules, clock=Clock(cfg.parse.timezone), max_line=cfg.parse.max_line,
                  match_timeout=cfg.parse.match_timeout, any_program=bool(mta),
                  rate_key=scorer.rate_key, **kw)


class _Progress:
    """A status line on stderr while a long scan runs, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.start = self.last = time.monotonic()

    def show(self, name: str, lines: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last > 0.5:
            self.last = now
            rate = lines / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r\x1b[Kscanning {safe(name)}: {lines:,} lines ({rate:,.0f}/s)")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled and self.last != self.start:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def _skip_lines(chunk: bytes, n: int) -> tuple[bytes, int]:
    """`chunk` without its first `n` lines, and how many it had of them."""
    pos = 0
    for i in range(n):
        nl = chunk.find(b"\n", pos)
        if nl < 0:
            return b"", i + (1 if pos < len(chunk) else 0)
        pos = nl + 1
    return chunk[pos:], n


def read_source(src: Source, parser: Parser, left: int = 0,
                pool: Pool | None = None) -> Iterator[tuple[list[Offence], int]]:
    """(offences, lines of `src` read so far) for each chunk of `src`, its first `left` lines
    skipped (applied before); with `pool`, the lines are matched on several cores (a large
    plain file read in parts by the workers, any other log read here and its chunks handed
    over). Raises what READ_ERRORS names."""
    parser.file = src.name
    reference = src.mtime() or time.time()
    parser.clock.set_reference(reference)
    if pool is not None and not left and pool.takes(src):
        yield from pool.read(src, parser, reference)
        return
    lines = 0
    stream = open_source(src)
    try:
        if pool is not None and not left:
            yield from pool.stream(chunks(stream, parser.max_line), parser, reference)
            return
        for chunk in chunks(stream, parser.max_line):
            if left:
                chunk, dropped = _skip_lines(chunk, left)
                left -= dropped
                lines += dropped
                if not chunk:
                    continue
            before = parser.stats.lines
            offs = parser.feed(chunk, lines)
            lines += parser.stats.lines - before
            yield offs, lines
    finally:
        if src.path is not None or src.journal is not None:
            stream.close()


def read_failed(src: Source, e: BaseException, lines: int, failed: list[str]) -> None:
    """One line in the user's words ("no such file or directory", and how far into the file
    it happened), the file still counted as failed."""
    if isinstance(e, BrokenPipeError):
        raise e                     # our stdout closed (`| head`): main() ends quietly
    read = f" (after {lines:,} lines read)" if lines else ""
    print(safe(f"logban: {src.name}: {read_error(e)}{read}"), file=sys.stderr)
    failed.append(src.name)


def feed_sources(sources: list[Source], parser: Parser, sink: Callable[[list[Offence]], None],
                 progress: _Progress | None = None, *, skip: Callable[[Source], int] | None = None,
                 read_to: Callable[[Source, int], None] | None = None, pool: Pool | None = None) -> list[str]:
    """Run every source through the parser in order; names of sources not read to the end.
    `skip(src)`: lines of it applied before, not read again; `read_to(src, lines)`: after each chunk."""
    failed: list[str] = []
    for src in sources:
        lines = 0
        try:
            for offs, lines in read_source(src, parser, skip(src) if skip else 0, pool):
                if offs:
                    sink(offs)
                if read_to:
                    read_to(src, lines)
                if progress:
                    progress.show(src.name, parser.stats.lines)
        except READ_ERRORS as e:
            read_failed(src, e, lines, failed)      # re-raises a closed stdout
    parser.finish()
    return failed


def _store(args, cfg: Config, *, readonly: bool = False, cache_mib: int | None = None):
    from ..store import (
        Store,  # SQLAlchemy takes a third of a second to import: only when needed
    )
    return Store(args.db or cfg.database, readonly=readonly, cache_mib=cache_mib)


def _check_backend(args, cfg: Config, *, dry_run: bool = False, lifting: bool = False) -> None:
    """Refuses (one line) a backend this process may not drive, before anything is recorded;
    a dry run that lifts nothing never reaches the kernel, so it needs no right to."""
    if (cfg.dry_run or dry_run) and not lifting:
        return
    from ..firewall import choose
    choose(cfg.firewall, backend=args.backend)


def _firewall(args, cfg: Config, store, *, dry_run: bool = False, allow: AllowList | None = None):
    """The firewall; in a dry run it adds nothing and still lifts what must go. `allow`: the
    allow-list the command already read (`_allow(cfg, store)`), else read here."""
    from ..firewall import Firewall, choose
    return Firewall(choose(cfg.firewall, backend=args.backend), store, allow or _allow(cfg, store),
                    dry_run=cfg.dry_run or dry_run)


def _enforce(args, cfg: Config, store, targets: list[str] | None = None, *, dry_run: bool = False,
             lifting: bool = False, allow: AllowList | None = None) -> str:
    """After the store changed: the kernel follows, for these `targets` only when given
    (a ban, an unban: the periodic sync repairs anything else), else in full. `lifting`:
    the change only ended bans. Returns a note for the user."""
    fw = _firewall(args, cfg, store, dry_run=dry_run, allow=allow)
    if not fw.has_backend:
        return "not enforced: firewall backend none" + (" (dry run)" if fw.dry_run else
                                                         " (not root)" if os.geteuid() else "")
    if fw.dry_run and not lifting:
        return f"{fw.backend.name}: dry run, nothing added"
    try:
        p = fw.sync() if targets is None else fw.update(targets)
    except FirewallError as e:
        raise FirewallError(f"{e}; the store has the change, `logban firewall sync` enforces it") from None
    return f"{fw.backend.name}: {len(p.add)} added, {len(p.remove)} removed" + (" (dry run: nothing added)"
                                                                               if fw.dry_run else "")


def _node(args, cfg: Config) -> str:
    return getattr(args, "node", None) or cfg.node or socket.gethostname()


def _allow(cfg: Config, store=None) -> AllowList:
    """The config's allow-list, with loopback and this host's own addresses; with `store`,
    and the live allow-list kept in it (`logban allow`)."""
    if store is not None:
        from ..liveallow import load
        return load(cfg, store)
    return AllowList(cfg.allow.addresses, cfg.allow.hostnames, big=cfg.big_senders)


def _engine(args, cfg: Config, store, allow: AllowList | None = None):
    from ..engine import Engine
    allow = allow or _allow(cfg, store)
    resolver = Resolver(cfg.allow.resolve_timeout) if cfg.allow.resolve else None
    return Engine(store, cfg.policy, allow, node=_node(args, cfg), dry_run=cfg.dry_run or args.dry_run,
                  resolver=resolver, clock_skew=cfg.parse.clock_skew, future="skip")


def parse_target(text: str, what: str = "target") -> str:
    """An address or network as the store spells it; a malformed one is the user's mistake."""
    bad = f"{what} {text!r}: not an address or network (like 192.0.2.7, 198.51.100.0/24, 2001:db8::/64)"
    if "/" not in text:
        ip = canonical_ip(text.strip())
        if ip is None:
            raise UsageError(bad)
        return ip
    try:
        net = parse_network(text, strict=False)
    except ValueError:
        raise UsageError(bad) from None
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _around(target: str) -> list[str]:
    """The target and every network that holds it, spelt as the store spells targets."""
    addr, _, plen = target.partition("/")
    fam, bits = (socket.AF_INET6, 128) if ":" in addr else (socket.AF_INET, 32)
    num = int.from_bytes(socket.inet_pton(fam, addr), "big")
    out = [target]
    for p in range(int(plen) if plen else bits):
        net = num >> (bits - p) << (bits - p)
        out.append(f"{socket.inet_ntop(fam, net.to_bytes(bits // 8, 'big'))}/{p}")
    return out


def _related_bans(store, target: str, now: float) -> dict:
    """The active bans that cover `target` or lie inside it, by target: an address's are read
    by name (canonical spellings: a bad row never reaches the kernel anyway); a network's
    members, and bad rows (`_related` reads them leniently), take a look through the
    targets of every active ban."""
    names = _around(target)
    if "/" in target:
        v, num, plen = canonical_num(target)
        bits = 128 if v == 6 else 32
        for t in store.active_targets(now):
            got = canonical_num(t)
            if got is None or (got[0] == v and got[2] > plen and got[1] >> (bits - plen) == num >> (bits - plen)):
                names.append(t)
    active = {b.target: b for b in store.active_bans(now, targets=names)}
    return {t: active[t] for t in _related(target, active)}


def _related(target: str, candidates) -> list[str]:
    """Of `candidates`, those that cover `target` or lie inside it."""
    net = ipaddress.ip_network(target)
    out = []
    for c in candidates:
        try:        # a bad row in the store (written by anything) must not stop unban or show
            n = ipaddress.ip_network(c, strict=False)
        except (ValueError, TypeError):
            if c == target:
                out.append(c)
            continue
        if n.version == net.version and (net.subnet_of(n) or n.subnet_of(net)):
            out.append(c)
    return out


def _text(raw: bytes, n: int) -> str:
    """The first `n` characters of a log line (invalid UTF-8 as \\xNN escapes)."""
    return raw.decode("utf-8", "backslashreplace")[:n]
