"""A database made, or migrated from an older schema version, to the models of `tables`.
Imported only when an open finds the version is not this logban's (see `base`)."""
from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from ..errors import StoreError
from .tables import ALLOWLIST, BANS, OFFENCE_HOURS, OFFENCES, OFFENDERS, POSITIONS, Meta


def _one_unreleased_ban(conn: Connection) -> None:
    """0.3: older duplicates of an unreleased ban are released as replaced, then the unique index."""
    keep = sa.select(sa.func.max(BANS.c.id)).where(BANS.c.released.is_(None)).group_by(BANS.c.target)
    conn.execute(sa.update(BANS).where(BANS.c.released.is_(None), BANS.c.id.not_in(keep))
                 .values(released=BANS.c.created, release_reason="replaced"))
    # The index of this version; migration 4 gives it its present shape.
    conn.exec_driver_sql("CREATE UNIQUE INDEX IF NOT EXISTS ux_bans_unreleased_target ON bans (target) "
                         "WHERE released IS NULL")


def _offence_names(conn: Connection) -> None:
    """0.4: offences keep the client's verified name, so every node's allow-list can read it."""
    if "name" not in {c["name"] for c in sa.inspect(conn).get_columns("offences")}:
        conn.exec_driver_sql("ALTER TABLE offences ADD COLUMN name VARCHAR")


def _dry_run_slot(conn: Connection) -> None:
    """0.5: dry-run bans no longer take the one unreleased slot of real bans. Of a target's
    unreleased bans, the newest of each kind (real, dry-run) stays."""
    keep = sa.select(sa.func.max(BANS.c.id)).where(BANS.c.released.is_(None)).group_by(BANS.c.target, BANS.c.dry_run)
    conn.execute(sa.update(BANS).where(BANS.c.released.is_(None), BANS.c.id.not_in(keep))
                 .values(released=BANS.c.created, release_reason="replaced"))
    conn.exec_driver_sql("DROP INDEX IF EXISTS ux_bans_unreleased_target")
    for ix in [*BANS.indexes, *OFFENDERS.indexes]:
        if ix.name.startswith("ux_bans_unreleased_") or ix.name == "ix_offenders_reset_at":
            ix.create(conn, checkfirst=True)


def _big_positions(conn: Connection) -> None:
    """Read positions in 64 bits: on PostgreSQL an offset past 2 GiB stopped the daemon (SQLite's
    INTEGER always was 64 bits)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql('ALTER TABLE positions ALTER COLUMN dev TYPE BIGINT, ALTER COLUMN inode TYPE BIGINT, '
                             'ALTER COLUMN "offset" TYPE BIGINT, ALTER COLUMN lines TYPE BIGINT')


def _hour_sql(conn: Connection) -> str:
    """The hour of an offence's time, in SQL: SQLite's CAST truncates, PostgreSQL's rounds."""
    return ("CAST(FLOOR(time / 3600) AS BIGINT)" if conn.dialect.name == "postgresql"
            else "CAST(time / 3600 AS INTEGER)")


def fill_offence_hours(conn: Connection) -> None:
    """Count the offences already stored into offence_hours (once; the writes keep it since)."""
    conn.exec_driver_sql("DELETE FROM offence_hours")
    conn.exec_driver_sql(f"INSERT INTO offence_hours (hour, node, mta, rule, kind, count) SELECT {_hour_sql(conn)}, "
                         "node, mta, rule, kind, count(*) FROM offences GROUP BY 1, 2, 3, 4, 5")


def _report_tables(conn: Connection) -> None:
    """0.7: `logban report` reads hourly counts and a covering index by target."""
    OFFENCE_HOURS.create(conn, checkfirst=True)
    fill_offence_hours(conn)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_offences_target_time")
    for ix in OFFENCES.indexes:
        ix.create(conn, checkfirst=True)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: lambda conn: POSITIONS.create(conn),          # 0.2: the daemon's read positions
    2: _one_unreleased_ban,
    3: _offence_names,
    4: _dry_run_slot,
    5: _big_positions,
    6: _report_tables,
    7: lambda conn: ALLOWLIST.create(conn, checkfirst=True),     # the live allow-list (`logban allow`)
}


def upgrade(conn: Connection, wanted: int, where: str) -> None:
    """In a write transaction: a new database created at version `wanted`, an older one
    migrated to it (an exception rolls every step back); a newer one refused."""
    if not sa.inspect(conn).has_table("meta"):
        SQLModel.metadata.create_all(conn)
        conn.execute(sa.insert(Meta.__table__), {"key": "schema_version", "value": str(wanted)})
        return
    row = conn.execute(sa.select(Meta.value).where(Meta.key == "schema_version")).first()
    version = int(row[0]) if row else 0
    if version > wanted:
        raise StoreError(f"{where}: database schema version {version} is newer than this "
                         f"logban understands ({wanted}); upgrade logban")
    while version < wanted:
        step = MIGRATIONS.get(version)
        if step is None:
            raise StoreError(f"{where}: no migration from schema version {version}")
        step(conn)                          # an exception rolls all steps back
        version += 1
    conn.execute(sa.update(Meta.__table__).where(Meta.key == "schema_version").values(value=str(version)))
