#!/usr/bin/env python3
"""The hand-made mutations of issue 14 (and the ones found since), each applied to the
source in turn and checked to make at least one of its tests fail, then reverted.

    python3 bench/issue14_mutations.py          # all (the kernel ones need root)
    python3 bench/issue14_mutations.py 0 7      # only these, by index (--list shows them)

Exits 1 when a mutation survives. It edits the work tree while it runs (each file is
restored in a `finally`): do not run it beside other work on the same tree.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (file, text, mutated text, the tests: "FILE" or "FILE -k EXPRESSION")
M = [
 ("logban/score.py", "min(past.duration * p.factor, p.max_duration)", "min(past.duration * 2.0, p.max_duration)", "tests/test_score.py"),
 ("logban/allow.py", "        nets += [ipaddress.ip_network(a) for a in (host_addresses() if own is None else own)]\n", "", "tests/test_allow.py"),
 ("logban/follow.py", "if os.fstat(fs.f.fileno()).st_size >= pos.offset:", "if os.fstat(fs.f.fileno()).st_size > pos.offset:", "tests/test_follow.py"),
 ("logban/parse.py", "if t <= self.reference + 2 * 86400:", "if t <= self.reference:", "tests/test_parse.py"),
 ("logban/store/writes.py", "BANS.c.expires.is_not(None), BANS.c.expires <= now)", "BANS.c.expires.is_not(None), BANS.c.expires < now)", "tests/test_store.py"),
 ("logban/score.py", "        if self._wide:\n", "        if False:\n", "tests/test_score.py"),
 ("logban/follow.py", "DRAIN_IDLE = 5.0 ", "DRAIN_IDLE = 0 ", "tests/test_follow.py"),
 ("logban/daemon.py", "        if (add or remove) and not self._apply(add, remove, now):", "        if True:", "tests/test_firewall.py -k elsewhere and nftables"),
 ("logban/follow.py", "wm.add_watch(d, mask, quiet=True)", "wm.add_watch(d, pyinotify.IN_DELETE_SELF, quiet=True)", "tests/test_daemon.py -k inotify_wakes"),
 ("logban/allow.py", "return name if any(ipaddress.ip_address(a) == want for a in addrs) else None", "return name", "tests/test_resolve.py"),
 ("logban/follow.py", "        self.lines += out.count(b\"\\n\")", "        self.lines = out.count(b\"\\n\")", "tests/test_follow.py"),
 ("logban/follow.py", "        n += buf.count(b\"\\n\")", "        n = buf.count(b\"\\n\")", "tests/test_follow.py"),
 ("logban/follow.py", "            pos += len(buf)", "            pos = len(buf)", "tests/test_follow.py"),
 ("logban/follow.py", "key=lambda p: p.stat().st_mtime, reverse=True)", "key=lambda p: p.stat().st_mtime)", "tests/test_follow.py"),
 ("logban/allow.py", "and 0 <= exp <= TIME_MAX)", "and 0 < exp <= TIME_MAX)", "tests/test_allow.py"),
 ("logban/allow.py", "return i < len(starts) and starts[i] < num + (1 << (bits - plen))", "return i < len(starts) and starts[i] <= num + (1 << (bits - plen))", "tests/test_allow.py"),
 ("logban/allow.py", "or int(plen) >= bits or num &", "or int(plen) > bits or num &", "tests/test_allow.py"),
 ("logban/allow.py", "ipv4_mapped is not None and net.prefixlen >= 96:", "ipv4_mapped is not None and net.prefixlen > 96:", "tests/test_allow.py"),
 ("logban/score.py", "duration = None if until == math.inf else until - t", "duration = None if until == math.inf else until + t", "tests/test_score.py"),
 ("logban/score.py", "                    if exp > t:", "                    if exp >= t:", "tests/test_score.py"),
 ("logban/score.py", "if self.active.get(k, 0) > t:", "if self.active.get(k, 0) >= t:", "tests/test_score.py"),
 ("logban/score.py", "t - past.created <= p.lookback:", "t - past.created < p.lookback:", "tests/test_score.py"),
 ("logban/score.py", "return self.durations.get(kind, self.default_duration)", "return self.durations.get(kind, None)", "tests/test_score.py"),
 ("logban/score.py", "key=lambda v: p.base_duration(v[1], v[2]) or math.inf)", "key=None)", "tests/test_score.py"),
 ("logban/score.py", "members = tuple(sorted(m, key=ipaddress.ip_address))", "members = tuple(sorted(m))", "tests/test_score.py"),
 ("logban/score.py", "if exp <= d.time or self.active.get(ip) is None]", "if exp < d.time or self.active.get(ip) is None]", "tests/test_score.py"),
 ("logban/score.py", "        st.offences += 1", "        st.offences += 2", "tests/test_score.py"),
 ("rules/postfix.toml", 'id = "postfix-rhsbl-sender"\nkind = "bad_sender"', 'id = "postfix-rhsbl-sender"\nkind = "dnsbl"', "tests/test_rules.py"),
 ("logban/firewall/iptables.py", '                r.protocol = "tcp"\n', "                pass\n", "tests/test_firewall.py -k matrix and iptables"),
 ("logban/firewall/plan.py", "        bits = 128 if v == 6 else 32\n        for p in lens[v]:", "        bits = 129 if v == 6 else 32\n        for p in lens[v]:", "tests/test_plan.py"),
 ("logban/follow.py", "            fs.offset = fs.lines = 0\n", "            fs.offset = fs.lines = 1\n", "tests/test_follow.py"),
 ("logban/follow.py", 'following the new file")\n                self._take(fs.spec, fs, out, final=False)', 'following the new file")\n                self._take(fs.spec, fs, out, final=True)', "tests/test_follow.py"),
 ("logban/parse.py", "+ int(m.group(3)) * 60) *", "+ int(m.group(3)) * 61) *", "tests/test_parse.py"),
 ("logban/parse.py", "(1 << 62) - 10 + int(nanos_hex, 16) / 1e9", "(1 << 62) - 11 + int(nanos_hex, 16) / 1e9", "tests/test_parse.py"),
 ("logban/parse.py", "return d.replace(tzinfo=self.zone).timestamp()", "return d.replace(tzinfo=None).timestamp()", "tests/test_parse.py"),
 ("logban/parse.py", "if w is None or t - w[0] > r.rate_per:", "if w is None or t - w[0] >= r.rate_per:", "tests/test_parse.py"),
 ("logban/parse.py", "w[0], w[1] = t, 0      #", "w[0], w[1] = t, 1      #", "tests/test_parse.py"),
 ("logban/score.py", "self.history[d.target] = Past(d.time, d.duration, d.count)\n        nd = ", "self.history[d.target] = Past(d.time, None, d.count)\n        nd = ", "tests/test_score.py"),
 ("logban/score.py", "key=lambda v: p.base_duration(v[1], v[2]) or math.inf)", "key=lambda v: p.base_duration(v[1]) or math.inf)", "tests/test_score.py"),
 ("logban/allow.py", 'if "/32 host LOCAL" in line and i:', "if False:", "tests/test_firewall.py -k own_addresses"),
 ("logban/allow.py", "key = (t, name) if names else t ", "key = t ", "tests/test_allow.py"),
 ("logban/firewall/hooks.py", "        if opts.ports:\n            m += [", "        if False:\n            m += [", "tests/test_firewall.py -k matrix and ipset-legacy"),
]


def main(argv: list[str]) -> int:
    if "--list" in argv:
        for i, (f, a, b, t) in enumerate(M):
            print(f"{i:2} {f}: {a.strip()[:60]!r} -> {b.strip()[:40]!r}  [{t}]")
        return 0
    only = set(argv)
    survived = []
    for i, (f, a, b, t) in enumerate(M):
        if only and str(i) not in only:
            continue
        path = ROOT / f
        s = path.read_text()
        assert s.count(a) == 1, (f, a)
        path.write_text(s.replace(a, b))
        try:
            file, _, k = t.partition(" -k ")
            cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", file] + (["-k", k] if k else [])
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, CI=""))
            last = (r.stdout.strip().splitlines() or ["?"])[-1]
            print(f"{i:2} {f}: {'killed' if r.returncode else 'SURVIVED'} ({last})", flush=True)
            if r.returncode == 0:
                survived.append(i)
        finally:
            path.write_text(s)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
