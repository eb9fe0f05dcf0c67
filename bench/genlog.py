"""Generate a realistic mixed Postfix mail log for benchmarks.

About 80% benign lines (connects, deliveries, queue manager chatter) and 20%
offences from thousands of IPv4 and IPv6 addresses, with RFC 3164 time stamps in
local time. The lines span --span seconds (a day by default) and by default end a minute
before now, so that a scan sees recent offences on any date; --start sets the first stamp
instead (for a log that is the same on every run).
"""
from __future__ import annotations

import argparse
import random
import sys
from datetime import datetime, timedelta


def _ip(rng: random.Random, v6_share: float = 0.15) -> str:
    if rng.random() < v6_share:
        return f"2001:db8:{rng.randrange(1 << 16):x}:{rng.randrange(1 << 16):x}::{rng.randrange(1, 1 << 16):x}"
    return f"{rng.choice((192, 198, 203))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def _qid(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789ABCDEF") for _ in range(10))


BENIGN = [
    "postfix/smtpd[{pid}]: connect from {name}[{ip}]",
    "postfix/smtpd[{pid}]: disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5",
    "postfix/smtpd[{pid}]: {qid}: client={name}[{ip}]",
    "postfix/cleanup[{pid}]: {qid}: message-id=<{qid}.{pid}@{name}>",
    "postfix/qmgr[{pid}]: {qid}: from=<user{pid}@example.org>, size={size}, nrcpt=1 (queue active)",
    "postfix/smtp[{pid}]: {qid}: to=<someone@example.net>, relay=mx.example.net[{ip}]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {qid})",
    "postfix/local[{pid}]: {qid}: to=<bob@example.com>, relay=local, delay=0.02, delays=0.01/0/0/0.01, dsn=2.0.0, status=sent (delivered to mailbox)",
    "postfix/qmgr[{pid}]: {qid}: removed",
    "postfix/postscreen[{pid}]: CONNECT from [{ip}]:{port} to [192.0.2.25]:25",
    "postfix/postscreen[{pid}]: PASS OLD [{ip}]:{port}",
    "postfix/anvil[{pid}]: statistics: max connection rate 1/60s for (smtp:{ip}) at Nov 21 10:00:00",
    "dovecot: imap-login: Login: user=<bob>, method=PLAIN, rip={ip}, lip=192.0.2.25, mpid={pid}, TLS",
]

OFFENCES = [
    "postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{ip}]: 454 4.7.1 <x{pid}@example.net>: Relay access denied; from=<spam@example.biz> to=<x{pid}@example.net> proto=ESMTP helo=<[{ip}]>",
    "postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{ip}]: 550 5.1.1 <u{pid}@example.com>: Recipient address rejected: User unknown in local recipient table; from=<a@example.biz> to=<u{pid}@example.com> proto=ESMTP helo=<bot>",
    "postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{ip}; from=<a@example.biz> to=<b@example.com> proto=ESMTP helo=<x>",
    "postfix/smtpd[{pid}]: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
    "postfix/smtpd[{pid}]: lost connection after AUTH from unknown[{ip}]",
    "postfix/postscreen[{pid}]: PREGREET 14 after 0.44 from [{ip}]:{port}: EHLO x\\r\\n",
    "postfix/postscreen[{pid}]: DNSBL rank 9 for [{ip}]:{port}",
    "postfix/smtpd[{pid}]: NOQUEUE: reject: EHLO from unknown[{ip}]: 504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname; proto=ESMTP helo=<localhost>",
]


def generate(lines: int, seed: int, offenders: int, out, start: datetime | None = None,
             span: float = 86400.0, offence_share: float = 0.2) -> None:
    """`start`: the first line's local time (naive); default `span` seconds before a minute ago."""
    rng = random.Random(seed)
    pool = [_ip(rng) for _ in range(offenders)]
    benign_pool = [_ip(rng) for _ in range(2000)]
    step = timedelta(seconds=span / max(lines, 1))
    t = start - step if start is not None else datetime.now() - timedelta(seconds=60 + span)
    write = out.write
    for _ in range(lines):
        t += step
        if rng.random() < offence_share:
            tmpl, ip, name = rng.choice(OFFENCES), rng.choice(pool), "unknown"
        else:
            tmpl, ip, name = rng.choice(BENIGN), rng.choice(benign_pool), "mail.example.org"
        msg = tmpl.format(pid=rng.randrange(1000, 60000), ip=ip, name=name, qid=_qid(rng),
                          size=rng.randrange(800, 90000), port=rng.randrange(1024, 65535))
        write(f"{t:%b %e %H:%M:%S} mx1 {msg}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--lines", type=int, default=1_000_000)
    ap.add_argument("--offenders", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", type=datetime.fromisoformat, metavar="YYYY-MM-DDTHH:MM:SS",
                    help="local time of the first line (default: --span before a minute ago)")
    ap.add_argument("--span", type=float, default=86400.0, metavar="SECONDS",
                    help="how long the lines cover (default: 86400, a day)")
    ap.add_argument("--offence-share", type=float, default=0.2, metavar="FRACTION",
                    help="share of lines that are offences (default: 0.2)")
    ap.add_argument("-o", "--output", default="-")
    a = ap.parse_args()
    if a.start is not None and a.start.tzinfo is not None:
        a.start = a.start.astimezone().replace(tzinfo=None)      # the stamps are local time
    out = sys.stdout if a.output == "-" else open(a.output, "w", encoding="ascii")
    with out:
        generate(a.lines, a.seed, a.offenders, out, a.start, a.span, a.offence_share)


if __name__ == "__main__":
    main()
