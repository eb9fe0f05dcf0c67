"""Benchmark `logban scan` against `fail2ban-regex` on a generated Postfix log, in one run.

Generates (once a day) a mixed Postfix log (bench/genlog.py, 10% offence lines by
default) and prints, for the real processes on the same file: lines/s, wall time and
peak RSS of `logban scan` in one process (--jobs 1) and on all cores (--jobs N), each
with the fast extra (Hyperscan pre-filter, when installed) and without it
(LOGBAN_FAST=0), where Debian's fail2ban is installed `fail2ban-regex` with its stock
postfix filter, and the ratios. Peak memory is sampled over the whole process tree (the scan's worker
processes included, as PSS: pages they share after fork count once), and the main
process's peak RSS is given too. Two baselines show
what the machine can do: plain Python line iteration and one chunked re.findall.

    python3 bench/scan_bench.py [--lines N] [--offence-share F] [--runs K] [--jobs N]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"


def _tree_rss(pid: int) -> int:
    """Proportional resident KiB (PSS: pages shared after fork counted once) of `pid` and
    all its descendants now."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def run(cmd: list[str], env: dict | None = None) -> tuple[float, int, int, float]:
    """Wall seconds, peak memory of the process tree (PSS) and peak RSS of the main process (MiB) of one
    command, and the CPU seconds (user + system) of its process tree: on a loaded machine the wall time
    depends on the other load, the CPU time much less."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss(p.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    done.set()
    th.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with status {os.waitstatus_to_exitcode(status)}: {err[-500:]!r}")
    # wait4's usage holds the process's own and that of the children it reaped (the workers).
    return secs, peak[0] // 1024, ru.ru_maxrss // 1024, ru.ru_utime + ru.ru_stime


def baselines(log: Path, n: int) -> None:
    t0 = time.perf_counter()
    with open(log, "rb") as f:
        for _ in f:
            pass
    print(f"baseline  python line iteration            {n / (time.perf_counter() - t0):>12,.0f} lines/s")
    rx = re.compile(rb"\]: (?:NOQUEUE: reject|warning: |lost connection|PREGREET|DNSBL rank)")
    t0 = time.perf_counter()
    with open(log, "rb") as f:
        while chunk := f.read(1 << 20):
            rx.findall(chunk)
    print(f"baseline  chunked re.findall               {n / (time.perf_counter() - t0):>12,.0f} lines/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=500_000)
    ap.add_argument("--offence-share", type=float, default=0.1)
    ap.add_argument("--runs", type=int, default=3, help="logban runs of each kind; the best is reported")
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="all cores (default: those available)")
    ap.add_argument("--no-fail2ban", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    log = OUT / f"mail-{a.lines}-{a.offence_share:g}.log"
    if not log.exists() or time.time() - log.stat().st_mtime > 86400:      # stamps relative to its day
        subprocess.run([sys.executable, str(HERE / "genlog.py"), "-n", str(a.lines), "--offence-share",
                        str(a.offence_share), "-o", str(log)], check=True)
    size = log.stat().st_size
    print(f"log: {log} ({a.lines:,} lines, {size / 2**20:.0f} MiB, {a.offence_share:.0%} offence lines); "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    baselines(log, a.lines)

    fast_modes = [("fast", "1"), ("no fast", "0")]
    if importlib.util.find_spec("hyperscan") is None:
        print("fast      hyperscan not installed (pip install 'logban[fast]'): pure-Python pre-filter only")
        fast_modes = fast_modes[1:]
    rates: dict[tuple[int, str], float] = {}
    cpus: dict[tuple[int, str], float] = {}
    for jobs in (1, a.jobs):
        for label, flag in fast_modes:
            env = dict(os.environ, PYTHONPATH=str(ROOT), LOGBAN_FAST=flag)
            best = None
            for _ in range(a.runs):
                got = run([sys.executable, "-m", "logban", "scan", "--json", "--no-progress", "--jobs", str(jobs),
                           str(log)], env)
                best = min(best or got, got)
            secs, rss, main_rss, cpu = best
            rates[jobs, label], cpus[jobs, label] = a.lines / secs, cpu
            where = "one process (--jobs 1)" if jobs == 1 else f"all cores (--jobs {jobs})"
            print(f"logban    scan, {where:<23} {label:<7} {rates[jobs, label]:>10,.0f} lines/s  {secs:6.2f} s  "
                  f"cpu {cpu:6.2f} s  peak {rss} MiB all processes (PSS), main process RSS {main_rss} MiB")
    if len(fast_modes) == 2:
        for jobs in (1, a.jobs):
            print(f"ratio     fast / no fast, --jobs {jobs:<18} {rates[jobs, 'fast'] / rates[jobs, 'no fast']:>8.2f}x")

    f2b = shutil.which("fail2ban-regex")
    filt = Path("/etc/fail2ban/filter.d/postfix.conf")
    if a.no_fail2ban or not f2b or not filt.exists():
        print("fail2ban  not installed (apt-get install fail2ban) or skipped: no ratio")
        return
    fsecs, _, frss, fcpu = run([f2b, str(log), str(filt)])
    frate = a.lines / fsecs
    print(f"fail2ban  fail2ban-regex, stock postfix filter {frate:>8,.0f} lines/s  {fsecs:6.2f} s  "
          f"cpu {fcpu:6.2f} s  peak RSS {frss} MiB")
    for (jobs, label), rate in rates.items():
        where = "one process" if jobs == 1 else "all cores"
        print(f"ratio     logban {where}, {label:<7} / fail2ban-regex {rate / frate:>8.1f}x  "
              f"(by CPU seconds: {fcpu / cpus[jobs, label]:.1f}x)")


if __name__ == "__main__":
    main()
