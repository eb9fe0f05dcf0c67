"""A day of Postfix log with the clients issue 19 is about, for bench/decisions_bench.py.

    python3 bench/decisions_traces.py > /tmp/traces.log && python3 bench/decisions_bench.py /tmp/traces.log

Real logs hold these patterns (the README's figures come from real ones); this trace
holds them on purpose, in numbers, with documentation addresses only:
- patient SASL guessers: bursts of 4 failures every ~20 minutes, for 2 to 6 hours;
- bots retrying a rejected HELO (450 Host not found) every 5 to 20 minutes, all day;
- Microsoft 365 servers (verified names under outbound.protection.outlook.com) retrying
  a 450 on Postfix's schedule, and one bot that only says so in its HELO;
- mail servers with verified names retrying a 450 on Postfix's schedule (1 to 3
  messages) that then deliver, and ones on RFC 5321's 30 minutes;
- users who mistype their password once or twice, then send;
- DNSBL-listed one-shot spammers.
"""
from __future__ import annotations

import random
import sys
import time

rng = random.Random(19)
T0 = (time.time() // 86400 - 2) * 86400          # two days ago, midnight UTC: the stamps are local time
out: list[tuple[float, str]] = []


def line(t: float, msg: str) -> None:
    out.append((t, f"postfix/smtpd[{rng.randrange(1000, 99999)}]: {msg}"))


def helo(t: float, client: str, ip: str, code: str = "450 4.7.1", h: str = "x.invalid") -> None:
    line(t, f"NOQUEUE: reject: RCPT from {client}[{ip}]: {code} <{h}>: Helo command rejected: Host not found; "
            f"from=<a@example.org> to=<b@example.com> proto=ESMTP helo=<{h}>")


def accepted(t: float, client: str, ip: str) -> None:
    line(t, f"{rng.randrange(16 ** 10):010X}: client={client}[{ip}]")


def postfix_schedule(t: float, until: float):
    backoff = 300.0
    while t < until:
        yield t
        t += backoff + rng.uniform(0, 300)
        backoff = min(backoff * 2, 4000.0)


for i in range(40):              # patient SASL guessers
    ip, t = f"203.0.113.{i + 1}", T0 + rng.uniform(0, 18 * 3600)
    for _ in range(rng.randrange(6, 18)):
        for k in range(4):
            line(t + 10 * k, f"warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")
        t += rng.uniform(1100, 1300)
for i in range(40):              # HELO bots retrying all day
    ip, t = f"198.51.100.{i + 1}", T0 + rng.uniform(0, 6 * 3600)
    while t < T0 + 86400:
        helo(t, "unknown", ip)
        t += rng.uniform(300, 1200)
for i in range(30):              # Microsoft 365, verified, on Postfix's schedule, 1 to 3 messages
    ip = f"2001:db8:365::{i + 1:x}"
    name = f"mail-db8eur05on{2000 + i}.outbound.protection.outlook.com"
    for _ in range(rng.randrange(1, 4)):
        for t in postfix_schedule(T0 + rng.uniform(0, 86400), T0 + 2 * 86400):
            helo(t, name, ip, h="EUR05-DB8-obe.outbound.protection.outlook.com")
forged = "198.51.100.200"        # says it is Microsoft only in its HELO
for k in range(30):
    helo(T0 + 3600 + 600 * k, "unknown", forged, h="EUR05-DB8-obe.outbound.protection.outlook.com")
for i in range(30):              # mail servers with verified names retrying, then delivering
    ip, name = f"192.0.2.{i + 1}", f"mx{i + 1}.example.net"
    start = T0 + rng.uniform(0, 86400)
    rfc = i % 3 == 0
    times = [start + 1800 * k for k in range(rng.randrange(10, 48))] if rfc else \
        [t for _ in range(rng.randrange(1, 4)) for t in postfix_schedule(start + rng.uniform(0, 600), start + 86400)]
    for t in times:
        helo(t, name, ip, h=name)
    accepted(max(times) + 300, name, ip)
for i in range(60):              # users mistyping
    ip, t = f"192.0.2.{100 + i}", T0 + rng.uniform(0, 86400)
    for k in range(rng.randrange(1, 3)):
        line(t + 20 * k, f"warning: unknown[{ip}]: SASL PLAIN authentication failed: (reason unavailable), "
                         f"sasl_username=user{i}")
    accepted(t + 60, "unknown", ip)
for i in range(200):             # DNSBL one-shots
    ip, t = f"2001:db8:bad:{i:x}::1", T0 + rng.uniform(0, 86400)
    line(t, f"NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] "
            f"blocked using zen.spamhaus.org; from=<a@example.org> to=<b@example.com> proto=ESMTP helo=<x>")

out.sort()
w = sys.stdout.write
for t, msg in out:
    w(f"{time.strftime('%b %e %H:%M:%S', time.localtime(t))} mx {msg}\n")
