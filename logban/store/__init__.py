"""Where decisions are kept: offenders, offences and bans in a database, through sqlmodel.

The models (`tables`) define the schema; `migrate` brings an older database to it;
`Store` opens one (`base`), writes (`writes`) and reads (`reads`) it; `RunLock` (`lock`)
keeps a second daemon of the same node off it.
"""
from __future__ import annotations

from ..dbfile import default_url
from .base import Base
from .lock import RunLock
from .migrate import MIGRATIONS, fill_offence_hours
from .reads import Reads
from .sql import (
    BAN_COLS,
    BAN_KINDS,
    NOTIFY_CHANNEL,
    OFFENCE_COLS,
    OFFENDER_COLS,
    PRUNE_CHUNK,
    UNREACHABLE,
    kind_names,
    short_error,
)
from .tables import (
    ALLOWLIST,
    BANS,
    OFFENCE_HOURS,
    OFFENCES,
    OFFENDERS,
    POSITIONS,
    SCHEMA_VERSION,
)
from .writes import Writes


class Store(Writes, Reads):
    """A logban store: open it with a URL (None: the default SQLite file)."""


__all__ = ["ALLOWLIST", "BANS", "BAN_COLS", "BAN_KINDS", "MIGRATIONS", "NOTIFY_CHANNEL", "OFFENCES", "OFFENCE_COLS",
           "OFFENCE_HOURS", "OFFENDERS", "OFFENDER_COLS", "POSITIONS", "PRUNE_CHUNK", "SCHEMA_VERSION", "UNREACHABLE",
           "Base", "RunLock", "Store", "default_url", "fill_offence_hours", "kind_names", "short_error"]
