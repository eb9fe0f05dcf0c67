"""Benchmark `logban scan` on a generated 1M-line mixed Postfix log.

Prints lines/s and peak RSS of the real `logban scan` process, two baselines
(plain Python line iteration, one chunked re.findall), and, where Debian's
fail2ban is installed, `fail2ban-regex` with its postfix filter on the same
file in the same run, with the ratio.

    python3 bench/scan_bench.py [--lines N] [--runs K]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def run(cmd: list[str]) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS in MiB and stdout of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {os.waitstatus_to_exitcode(status)}")
    return secs, ru.ru_maxrss // 1024, out


def baselines(log: Path, n: int) -> None:
    t0 = time.perf_counter()
    with open(log, "rb") as f:
        for _ in f:
            pass
    print(f"baseline  python line iteration      {n / (time.perf_counter() - t0):>12,.0f} lines/s")
    rx = re.compile(rb"\]: (?:NOQUEUE: reject|warning: |lost connection|PREGREET|DNSBL rank)")
    t0 = time.perf_counter()
    with open(log, "rb") as f:
        while chunk := f.read(1 << 20):
            rx.findall(chunk)
    print(f"baseline  chunked re.findall         {n / (time.perf_counter() - t0):>12,.0f} lines/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3, help="logban runs; the best is reported")
    ap.add_argument("--no-fail2ban", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    log = OUT / f"mail-{a.lines}.log"
    if not log.exists() or time.time() - log.stat().st_mtime > 86400:      # stamps relative to its day
        subprocess.run([sys.executable, str(HERE / "genlog.py"), "-n", str(a.lines), "-o", str(log)], check=True)
    size = log.stat().st_size
    print(f"log: {log} ({a.lines:,} lines, {size / 2**20:.0f} MiB, about 20% offence lines)")
    baselines(log, a.lines)

    best = None
    for _ in range(a.runs):
        secs, rss, _ = run([sys.executable, "-m", "logban", "scan", "--json", "--no-progress", str(log)])
        best = min(best or (secs, rss), (secs, rss))
    secs, rss = best
    rate = a.lines / secs
    print(f"logban    scan (3 packs, best of {a.runs})   {rate:>12,.0f} lines/s  {secs:6.2f} s  peak RSS {rss} MiB")

    f2b = shutil.which("fail2ban-regex")
    filt = Path("/etc/fail2ban/filter.d/postfix.conf")
    if a.no_fail2ban or not f2b or not filt.exists():
        print("fail2ban  not installed (apt-get install fail2ban) or skipped: no ratio")
        return
    fsecs, frss, _ = run([f2b, str(log), str(filt)])
    frate = a.lines / fsecs
    print(f"fail2ban  fail2ban-regex postfix     {frate:>12,.0f} lines/s  {fsecs:6.2f} s  peak RSS {frss} MiB")
    print(f"ratio     logban / fail2ban-regex    {rate / frate:>12.1f}x")


if __name__ == "__main__":
    main()
