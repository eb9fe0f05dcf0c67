"""A real PostgreSQL server for the tests: initdb and pg_ctl in a temporary directory.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user
(the Debian package creates it). Trust authentication, loopback only.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

from conftest import skip_or_fail


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return cands[-1] if cands else None


def need_postgres() -> None:
    why = None
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        why = "needs PostgreSQL server binaries (Debian: postgresql)"
    else:
        try:
            import psycopg
        except ImportError:
            why = "needs psycopg (pip install 'psycopg[binary]')"
    if why is None and os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            why = "running as root needs a postgres user to run the server as"
    if why:
        skip_or_fail(why)


class PgServer:
    def __init__(self, base: Path) -> None:
        need_postgres()
        self.base = base
        self.data = base / "data"
        base.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(base, pw.pw_uid, pw.pw_gid)
            for p in [base, *base.parents]:
                if p == Path("/"):
                    break
                os.chmod(p, os.stat(p).st_mode | 0o011)       # the server must reach its directory
        self._run(_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        self.start()
        import psycopg
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as c:
            c.execute("CREATE DATABASE logban")

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", self.user, "--", *cmd] if self.user else list(cmd)
        r = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {r.stderr.strip()[-500:]}")

    def dsn(self, db: str = "logban") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/logban"

    def start(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-l", str(self.base / "server.log"),
                  "-o", f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", "fast", "stop")

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
