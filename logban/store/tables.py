"""The schema: the tables as sqlmodel models, and the version a database of them carries
(SCHEMA_VERSION, kept in `sql` so an open checks it without importing sqlmodel).

`Store` migrates an older database to this version in one transaction (`migrate`), and
refuses a newer one. The queries read and write through `sql`'s Core views of these
tables; only creating and migrating a database imports this module.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from .sql import DRY_SLOT, REAL_SLOT, SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION"]


class Meta(SQLModel, table=True):
    __tablename__ = "meta"
    key: str = Field(primary_key=True)
    value: str


class OffenderRow(SQLModel, table=True):
    __tablename__ = "offenders"
    target: str = Field(primary_key=True)          # address, or network for IPv6 /64 scoring
    score: float = 0.0                             # score at score_time
    score_time: float = 0.0
    first_seen: float
    last_seen: float = Field(index=True)
    offences: int = 0
    kinds: int = 0                                 # bit set of kinds seen (kind_names)
    name: str | None = None                        # last verified client name
    # Offences before this no longer count (ban, release); indexed: a daemon looks for
    # scores cleared by `logban unban` every second.
    reset_at: float = Field(default=0.0, index=True)


class OffenceRow(SQLModel, table=True):
    __tablename__ = "offences"
    # node too: the report counts a period's offences per target (of one node) from the index alone.
    __table_args__ = (sa.Index("ix_offences_target_time_node", "target", "time", "node"),)
    id: int | None = Field(default=None, primary_key=True)
    time: float = Field(index=True)
    target: str
    ip: str
    mta: str
    rule: str
    kind: str
    score: float
    node: str
    file: str
    line: int
    text: str = ""
    name: str | None = None                        # the client's verified name: other nodes' allow-lists read it


class BanRow(SQLModel, table=True):
    __tablename__ = "bans"
    # One unreleased ban per target, whichever node or process decides it: two mail
    # servers deciding the same ban at once make one ban. Dry-run bans have a slot of their
    # own: a record of what would have happened never stands in the way of a real ban.
    __table_args__ = (sa.Index("ux_bans_unreleased_target", "target", unique=True,
                               sqlite_where=sa.text(REAL_SLOT), postgresql_where=sa.text(REAL_SLOT)),
                      sa.Index("ux_bans_unreleased_dry_target", "target", unique=True,
                               sqlite_where=sa.text(DRY_SLOT), postgresql_where=sa.text(DRY_SLOT)))
    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(index=True)
    kind: str
    rule: str = ""
    reason: str = ""
    score: float = 0.0
    created: float = Field(index=True)
    expires: float | None = None                   # None: permanent
    duration: float | None = None
    released: float | None = Field(default=None, index=True)
    release_reason: str | None = None              # expiry, unban, allow-list, aggregated, replaced
    count: int = 1                                 # bans of this target so far, this one included
    escalated: bool = False
    dry_run: bool = False
    node: str = ""
    source: str = "auto"                           # auto or manual
    members: str = ""                              # a network ban: the address bans it replaced
    text: str = ""                                 # the log line that decided it


class PositionRow(SQLModel, table=True):
    """How far the daemon has read a followed file, written with the offences read up to it."""
    __tablename__ = "positions"
    node: str = Field(primary_key=True)
    path: str = Field(primary_key=True)            # the followed path as configured
    # 64 bits: a busy server's log passes 2 GiB before rotation, XFS inode numbers pass 2**32.
    dev: int = Field(sa_type=sa.BigInteger)
    inode: int = Field(sa_type=sa.BigInteger)
    fingerprint: str                               # sha256 of the file's first `fp_len` bytes
    fp_len: int
    offset: int = Field(sa_type=sa.BigInteger)     # end of the last whole line read
    lines: int = Field(sa_type=sa.BigInteger)      # lines read so far (line numbers of offences)
    updated: float


class OffenceHourRow(SQLModel, table=True):
    """Offences counted per hour, node, pack, rule and kind, written with the offences: the
    report's charts read thousands of these rows, not millions of offences."""
    __tablename__ = "offence_hours"
    hour: int = Field(primary_key=True, sa_type=sa.BigInteger)    # epoch seconds // 3600
    node: str = Field(primary_key=True)
    mta: str = Field(primary_key=True)
    rule: str = Field(primary_key=True)
    kind: str = Field(primary_key=True)
    count: int = Field(sa_type=sa.BigInteger)


class AllowRow(SQLModel, table=True):
    """The live allow-list (`logban allow add`): every node reads it each second."""
    __tablename__ = "allowlist"
    target: str = Field(primary_key=True)          # canonical address or network, or a name pattern
    kind: str                                      # address, network or name
    reason: str = ""
    created: float
    expires: float | None = None                   # None: until removed
    added_by: str = ""                             # the node (host) that added it


OFFENCES, OFFENDERS, BANS = OffenceRow.__table__, OffenderRow.__table__, BanRow.__table__
POSITIONS, OFFENCE_HOURS, ALLOWLIST = PositionRow.__table__, OffenceHourRow.__table__, AllowRow.__table__
