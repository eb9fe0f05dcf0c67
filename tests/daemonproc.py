"""The real `logban run` process, started and watched by the tests."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import ROOT

# Addresses of the documentation ranges that are not this host's own (a CI host may use 192.0.2.0/24).
NET = "198.51.100"


def stamp() -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime())


def sasl(ip: str) -> str:
    """One auth_failed offence (score 1): counted, bans only after five."""
    return f"{stamp()} mx postfix/smtpd[7]: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"


def dnsbl(ip: str) -> str:
    """One dnsbl offence: bans at once."""
    return (f"{stamp()} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service "
            f"unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<a@b.example> "
            f"to=<c@d.example> proto=ESMTP helo=<x>\n")


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


class Daemon:
    def __init__(self, tmp: Path, *args: str, config: str = "", backend: str = "none", db: str | None = None) -> None:
        """`db`: a store URL (a shared PostgreSQL); default a SQLite file in `tmp`."""
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.cfg = tmp / "logban.toml"
        if not self.cfg.exists() or config:
            self.cfg.write_text('[parse]\ntimezone = "UTC"\n[daemon]\npid_file = "%s"\n%s' % (tmp / "logban.pid", config))
        self.db = tmp / "logban.db"
        self.url = db or f"sqlite:///{self.db}"
        self.args = ["-c", str(self.cfg), "--db", self.url, "--backend", backend, "run", *args]
        self.lines: list[str] = []
        self.p: subprocess.Popen | None = None

    def start(self, prefix: list[str] = (), env: dict | None = None, hooks: dict | None = None,
              ready: bool = True) -> "Daemon":
        """`hooks`: LOGBAN_TEST_* variables for tests/launch.py (fault injection, waits), which
        then runs logban in place of `python -m logban`."""
        self.lines = []
        main = [str(ROOT / "tests" / "launch.py")] if hooks else ["-m", "logban"]
        env = {**(env or {}), **(hooks or {})}
        self.p = subprocess.Popen([*prefix, sys.executable, *main, *self.args], stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
        threading.Thread(target=self._collect, args=(self.p,), daemon=True).start()
        if ready:
            self.wait_log("running:")
        return self

    def _collect(self, p) -> None:
        for line in p.stderr:
            self.lines.append(line)

    def wait_log(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ln in list(self.lines):
                if text in ln:
                    return ln
            if self.p.poll() is not None and not any(text in ln for ln in self.lines):
                time.sleep(0.2)
                if not any(text in ln for ln in self.lines):
                    raise AssertionError(f"logban exited ({self.p.returncode}) without {text!r}:\n{''.join(self.lines)}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the log within {timeout} s:\n{''.join(self.lines)}")

    def query(self, sql: str):
        if self.url.startswith("postgresql"):
            import psycopg
            with psycopg.connect(self.url.replace("postgresql+psycopg", "postgresql", 1)) as con:
                return [tuple(r) for r in con.execute(sql).fetchall()]
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def offences(self) -> int:
        return self.query("SELECT count(*) FROM offences")[0][0]

    def caught_up(self) -> bool:
        """Whether the store's read positions stand at the end of every followed file: all
        written so far is read, and its offences committed with them (one transaction)."""
        rows = self.query("SELECT path, dev, inode, \"offset\" FROM positions")
        for path, dev, inode, offset in rows:
            try:
                st = os.stat(path)
            except OSError:
                return False
            if (st.st_dev, st.st_ino, st.st_size) != (dev, inode, offset):
                return False
        return bool(rows)

    def wait_offences(self, n: int, timeout: float = 30) -> None:
        """Until the daemon has read every line written (a condition, not a pause), then
        exactly n offences: more would be a line counted twice."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.offences() >= n and self.caught_up():
                break
            time.sleep(0.05)
        assert self.offences() == n and self.caught_up(), (self.offences(), n, self.query("SELECT * FROM positions"))

    def close(self) -> None:
        """Stopped at the end of a test: SIGTERM first (the process saves its coverage data
        as it exits), kill -9 if it does not go."""
        if self.p is None or self.p.poll() is not None:
            return
        self.p.terminate()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(10)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.p.send_signal(sig)
        return self.p.wait(20)
