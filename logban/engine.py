"""Where the stages meet: offences from the parser are scored, and offences and
decisions go to the store in batches, one transaction each.

The scorer's state is rebuilt from the store when the engine starts (active
bans, ban history, the offences that still count), so a restart forgets nothing.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .allow import PENDING, AllowList, Resolver, valid_target
from .parse import Clock, Offence, parse_header, reply_class
from .score import Decision, Policy, Scorer
from .store import UNREACHABLE, Store, short_error
from .store.writes import OffenceRows, pack

if TYPE_CHECKING:
    from .store.writer import Writer        # scan --apply's: the daemon loads no multiprocessing

log = logging.getLogger("logban")

BATCH = 50_000
HISTORY_MARGIN = 1_000      # ban ids read again: ones taken before a commit that came late
_TIME = attrgetter("time")


@dataclass
class EngineStats:
    offences: int = 0
    bans: int = 0
    expired_on_arrival: int = 0      # decided from old log lines: recorded as already over
    released_allow: int = 0          # bans released because the allow-list now covers them
    network_bans: int = 0
    escalated: int = 0
    future: int = 0                  # offences stamped ahead of this host's clock by more than the skew
    dropped: int = 0                 # offences the store refused to hold (logged)


def _end(b) -> float:
    """When a ban row ends (-inf: no row)."""
    if b is None:
        return -math.inf
    return math.inf if b.expires is None else b.expires


def recorded_reply(text: str | None, clock: Clock) -> int:
    """The reply class of a recorded offence, read again from its line (the store keeps the line)."""
    if not text:
        return 0
    raw = text.encode("utf-8", "replace")
    h = parse_header(raw, clock)
    return 0 if h is None else reply_class(raw, h.start)


class Engine:
    def __init__(self, store: Store, policy: Policy, allow: AllowList, *, node: str, dry_run: bool,
                 resolver: Resolver | None = None, batch: int = BATCH, wait_names: bool = True,
                 clock_skew: float = 300.0, future: str = "skip") -> None:
        """`wait_names=False` (the daemon): an offence that waits for its client's name is
        held, and the lines after it are scored meanwhile; `fresh()` takes it up again.
        `future`: what becomes of an offence stamped more than `clock_skew` ahead of this
        host's clock: "skip" (left out, counted in stats.future) or "now" (counted as read
        now: a daemon reads lines as they are written). A ban must never be stretched into
        the future by a sender's wrong clock."""
        self.store, self.node, self.dry_run = store, node, dry_run
        self.clock_skew, self.future_now = clock_skew, future == "now"
        self.allow = allow
        self.resolver = resolver if allow.names else None
        self.wait_names = wait_names
        self._held: dict[str, list[tuple[Offence, bool]]] = {}     # ip -> offences waiting for its name
        self.batch = batch
        self.stats = EngineStats()
        self.scorer = Scorer(policy, allow)
        self._offences: list[tuple[Offence, str]] = []
        self._pending: list[Decision] = []
        self._fresh: list[Decision] = []
        self._hist_id = 0                    # bans up to this id are in the scorer's history
        # Batches go to this process's store, or (scan --apply) to a process writing them.
        self.writer: Writer | None = None
        self._restore()

    def _restore(self) -> None:
        self.store.expire(time.time())
        self.release_allowed()
        sc = self.scorer
        self._load_history()
        self.refresh_bans()
        for ip in self.store.partners(self.allow):
            sc.partner(ip)
        clock = Clock()
        for r in self.store.recent_offences(sc.policy.horizon):
            sc.seed(Offence(r.time, r.ip, r.mta, r.rule, r.kind, r.score, r.file, r.line, name=r.name,
                            reply=recorded_reply(r.text, clock)))

    def release_allowed(self) -> list[str]:
        """Bans of targets the allow-list covers now are released."""
        gone = [b.target for b in self.store.unreleased()
                if valid_target(b.target) and self.allow.target_allowed(b.target)]
        if gone:
            done = self.store.release(gone, "allow-list", time.time())
            self.stats.released_allow += sum(done.values())
            for t in gone:
                self.scorer.release(t)
        return gone

    def refresh_bans(self) -> None:
        """The scorer's view of the bans made equal to the store's (changed by `logban ban`/`unban`,
        another node, or at start). The history only gains the bans recorded since the last look."""
        sc = self.scorer
        # Enforcing, dry-run bans are records of what would have happened: they neither hold
        # a client as banned nor escalate its next ban. A dry run builds on both.
        real = not self.dry_run
        got, top = self.store.history_after(max(0, self._hist_id - HISTORY_MARGIN), real_only=real)
        self._hist_id = max(self._hist_id, top)
        for t, p in got.items():
            old = sc.history.get(t)
            if old is None or p.created >= old.created:
                sc.history[t] = p
        # A row no logban wrote (0.0.0.0/0 would make every client look banned already) is ignored.
        longest: dict[str, object] = {}         # a dry run may see a real and a dry-run ban of one target
        for b in self.store.unreleased(real_only=real):
            if valid_target(b.target) and _end(b) >= _end(longest.get(b.target)):
                longest[b.target] = b
        pending = {d.target for d in self._pending}     # decided here, not recorded yet
        for t in [t for t in sc.active if t not in longest and t not in pending]:
            sc.release(t)
        for t, b in longest.items():
            if sc.active.get(t) != _end(b):
                sc.mark_banned(Decision(b.target, b.kind, b.rule, b.score, b.created, b.duration, b.count,
                                        b.escalated, b.reason))

    def set_dry_run(self, dry_run: bool) -> None:
        """Switched by a reload: from now on bans are recorded as this says, and the scorer
        holds as banned what this mode counts (see `refresh_bans`)."""
        if dry_run != self.dry_run:
            self.flush()
            self.wait()
            self.dry_run = dry_run
            self._load_history()
            self.refresh_bans()

    def _load_history(self) -> None:
        """The whole ban history this mode builds on (real bans only, unless a dry run)."""
        self._hist_id = self.store.max_ban_id()
        self.scorer.history = self.store.history(real_only=not self.dry_run)

    def reconfigure(self, policy: Policy, allow: AllowList) -> list[str]:
        """A reloaded config: new policy and allow-list, the same state."""
        self.flush()
        self.wait()
        self.allow = allow
        self.scorer.configure(policy, allow)
        return self.release_allowed()

    def add(self, offences: list[Offence], *, record: bool = True) -> None:
        """Score offences; `record=False`: another node's, already in the store, counted here too."""
        resolver = self.resolver
        if resolver is not None and self._held:
            self.settle()
        now = time.time()
        if offences and max(map(_TIME, offences)) > now + self.clock_skew:
            offences = self._future(offences, now)
        if resolver is None:
            self._score(offences, record)       # no name to wait for: the whole batch at once
        else:
            for o in offences:
                if o.name is None:
                    held = self._held.get(o.ip)
                    if held is not None:             # behind an offence of its own waiting for the name
                        held.append((o, record))
                        continue
                    if self.scorer.would_ban(o):
                        # Only a client about to be banned costs a DNS lookup, never every line.
                        if not self.wait_names:
                            name = resolver.lookup(o.ip)
                            if name is PENDING:
                                self._held[o.ip] = [(o, record)]
                                continue
                            o.name = name
                        else:
                            o.name = resolver.names([o.ip]).get(o.ip)
                self._score((o,), record)
        if len(self._offences) >= self.batch:
            self.flush()

    def _future(self, offences: list[Offence], now: float) -> list[Offence]:
        out = []
        for o in offences:
            if o.time > now + self.clock_skew:
                self.stats.future += 1
                if not self.future_now:
                    continue
                o.time = now
            out.append(o)
        return out

    def settle(self) -> None:
        """Offences held for their client's name: scored once it is in (or its time is up)."""
        for ip in list(self._held):
            name = self.resolver.lookup(ip)
            if name is PENDING:
                continue
            for o, record in self._held.pop(ip):
                if o.name is None:
                    o.name = name
                self._score((o,), record)

    def holding(self) -> bool:
        """Offences wait for a name: the caller should look again soon (`fresh`)."""
        return bool(self._held)

    def _score(self, offences: Iterable[Offence], record: bool) -> None:
        count, pending, fresh = self.scorer.count, self._pending, self._fresh
        keep = self._offences.append
        for o in offences:
            target, ds = count(o)
            if record and target is not None:
                # Allow-listed and special clients are never offenders: not recorded, not in stats.
                keep((o, target))
            if ds:
                pending.extend(ds)
                fresh.extend(ds)

    def has_unsaved(self) -> bool:
        return bool(self._offences or self._pending or self.scorer.new_partners)

    def unsaved(self) -> int:
        """Offences not in the store yet."""
        return len(self._offences)

    def fresh(self) -> list[Decision]:
        """Decisions made since the last call: to enforce at once, whether or not the store is reachable."""
        if self._held:
            self.settle()
        out, self._fresh = self._fresh, []
        return out

    def flush(self, positions: list[dict] = ()) -> None:
        """Offences and decisions to the store in one transaction, with the read positions
        they come up to (with a writer: sent to it, in the database once `wait` returns)."""
        now = time.time()
        if not self._offences and not self._pending and not self.scorer.new_partners and not positions:
            return
        sc = self.scorer
        # Each target's score as of its last offence in the batch.
        scores = sc.scores({t: o.time for o, t in self._offences})
        if self.writer is not None:
            self.writer.send(pack(self._offences), self._pending, sc.new_partners, scores, positions,
                             self.node, self.dry_run, now)
        else:
            self.stats.dropped += record_batch(self.store, OffenceRows.of(self._offences, self.node), self._pending,
                                               sc.new_partners, scores, positions, node=self.node,
                                               dry_run=self.dry_run, now=now)
        sc.new_partners = []
        self.stats.offences += len(self._offences)
        self.stats.bans += len(self._pending)
        self.stats.expired_on_arrival += sum(1 for d in self._pending if d.expires is not None and d.expires <= now)
        self.stats.network_bans += sum(1 for d in self._pending if d.members)
        self.stats.escalated += sum(1 for d in self._pending if d.escalated)
        self._offences.clear()
        self._pending.clear()

    def wait(self) -> None:
        """Everything flushed is in the store (a writer's batches written, its errors raised here)."""
        if self.writer is not None:
            self.stats.dropped += sum(self.writer.wait())

    def release(self, targets: list[str], reason: str) -> None:
        self.flush()
        self.wait()
        self.store.release(targets, reason, time.time())
        for t in targets:
            self.scorer.release(t)

    def close(self, positions: list[dict] = ()) -> None:
        """Offences still waiting for a name are scored (waiting at most the lookup time) and all is recorded."""
        if self._held:
            for ip in list(self._held):
                self.resolver.names([ip])
            self.settle()
        self.flush(positions)
        self.wait()
        if self.resolver is not None:
            self.resolver.close()


def record_batch(store: Store, offences: OffenceRows, decisions: list[Decision],
                 partners: list[tuple[str, str, float]], scores: dict[str, float], positions: list[dict], *,
                 node: str, dry_run: bool, now: float) -> int:
    """A batch in one transaction; returns the offences left out (logged): a row the database
    refuses (a value out of its range, text it cannot hold) must not keep the rest out, nor
    stop the daemon, nor every restart."""
    kw = {"node": node, "dry_run": dry_run, "now": now}
    if not offences and not decisions and not partners:
        try:
            store.save_positions(node, positions, now)
        except UNREACHABLE:
            raise
        except sa.exc.StatementError as e:
            log.error("read positions not recorded: %s", short_error(e))
        return 0
    try:
        store.record(offences, decisions, scores=scores, positions=positions, partners=partners, **kw)
        return 0
    except UNREACHABLE:
        raise
    except sa.exc.StatementError as e:
        log.error("store refused a batch (%s): recording it in parts", short_error(e))
    return _record_apart(store, offences, decisions, partners, scores, positions, kw)


def _record_apart(store: Store, offences: OffenceRows, decisions: list[Decision],
                  partners: list[tuple[str, str, float]], scores: dict[str, float], positions: list[dict],
                  kw: dict) -> int:
    """The batch in parts: offences in halves down to the one the database refuses (left
    out, logged), then the decisions with the read positions (or, refused too, without)."""
    rec = store.record
    dropped = 0
    parts = [offences]
    while parts:
        part = parts.pop()
        try:
            rec(part, [], scores={r[1]: scores.get(r[1], 0.0) for r in part}, **kw)
        except UNREACHABLE:
            raise
        except sa.exc.StatementError as e:
            if len(part) > 1:
                parts += [OffenceRows(part[len(part) // 2:]), OffenceRows(part[:len(part) // 2])]
                continue
            _, _, ip, *_, file, line, _, _ = part[0]         # OFFENCE_COLS
            dropped += 1
            log.error("offence not recorded: %s line %d (%s): %s", file, line, ip, short_error(e))
    for pos, what in ((positions, "with"), ((), "without")):
        try:
            rec([], decisions, positions=pos, partners=partners, **kw)
            break
        except UNREACHABLE:
            raise
        except sa.exc.StatementError as e:
            log.error("bans and read positions not recorded %s them: %s", what, short_error(e))
    return dropped


def write_packed(store: Store, packed: tuple[list[tuple], list[tuple]], decisions: list[Decision],
                 partners: list[tuple[str, str, float]], scores: dict[str, float], positions: list[dict], node: str,
                 dry_run: bool, now: float) -> int:
    """In a writer (`Writer(url, write_packed)`): a batch `Engine.flush` sent (`pack`), as
    `flush` records it in this process. Offences left out."""
    return record_batch(store, OffenceRows.unpack(packed, node), decisions, partners, scores, positions,
                        node=node, dry_run=dry_run, now=now)
