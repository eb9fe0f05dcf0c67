"""Where decisions are kept: offenders, offences and bans in a database, through sqlmodel.

The models (`tables`) define the schema; `migrate` makes a database of them or brings an
older one up to them; `Store` opens one (`base`), writes (`writes`) and reads (`reads`)
it through the Core views of `sql`; `RunLock` (`lock`) keeps a second daemon of the same
node off it. sqlmodel and the ORM are imported only to create or migrate a database (or
when `tables`, `migrate` or their names are asked for here): `logban ban` and `unban`
start faster without them.
"""
from __future__ import annotations

import importlib

from ..dbfile import default_url
from .base import Base
from .lock import RunLock
from .reads import Reads
from .sql import (
    ALLOWLIST,
    BAN_COLS,
    BAN_KINDS,
    BANS,
    BULK_CACHE_MIB,
    NOTIFY_CHANNEL,
    OFFENCE_COLS,
    OFFENCE_HOURS,
    OFFENCES,
    OFFENDER_COLS,
    OFFENDERS,
    POSITIONS,
    PRUNE_CHUNK,
    SCHEMA_VERSION,
    UNREACHABLE,
    kind_names,
    short_error,
)
from .writes import Writes


class Store(Writes, Reads):
    """A logban store: open it with a URL (None: the default SQLite file)."""


_LAZY = {"MIGRATIONS": "migrate", "fill_offence_hours": "migrate", "migrate": None, "tables": None}


def __getattr__(name: str):
    """`migrate`, `tables` and their names on first use: they import sqlmodel."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = ["ALLOWLIST", "BANS", "BAN_COLS", "BULK_CACHE_MIB", "BAN_KINDS", "MIGRATIONS", "NOTIFY_CHANNEL", "OFFENCES", "OFFENCE_COLS",
           "OFFENCE_HOURS", "OFFENDERS", "OFFENDER_COLS", "POSITIONS", "PRUNE_CHUNK", "SCHEMA_VERSION", "UNREACHABLE",
           "Base", "RunLock", "Store", "default_url", "fill_offence_hours", "kind_names", "short_error"]
