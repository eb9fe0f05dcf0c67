"""The command line's grammar: every command, option and help text."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..errors import UsageError


class _Args(argparse.ArgumentParser):
    def error(self, message: str) -> None:          # one line, exit 2
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    ap = _Args(prog="logban", description="Ban hostile mail clients found in Postfix, sendmail and qmail logs.")
    ap.add_argument("--version", action="version", version=f"logban {__version__}")
    ap.add_argument("-c", "--config", type=Path, help="TOML config file (default: /etc/logban/logban.toml if present)")
    ap.add_argument("--db", help="database URL (SQLAlchemy; default: SQLite)")
    ap.add_argument("--backend", choices=("nftables", "ipset", "iptables", "none"), help="firewall backend")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Args)

    sc = sub.add_parser("scan", help="scan log files once and report offenders")
    sc.add_argument("paths", nargs="+", metavar="PATH", help="file, directory, rotated set member, or - for stdin")
    sc.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack (postfix, sendmail, qmail)")
    out = sc.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON report")
    out.add_argument("--events", action="store_true", help="one JSON object per offence")
    sc.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")
    sc.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    sc.add_argument("--apply", action="store_true",
                    help="score the offences by their log time and record offences and bans in the store")
    sc.add_argument("--dry-run", action="store_true", help="with --apply: bans are recorded as dry-run, never enforced")
    sc.add_argument("--reapply", action="store_true",
                    help="with --apply: also the lines an earlier scan --apply applied (they are counted again)")
    sc.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")

    ls = sub.add_parser("list", help="active bans (--all: history too)")
    ls.add_argument("--all", action="store_true", help="every ban, released ones too")
    ls.add_argument("--json", action="store_true", help="a JSON array")

    bn = sub.add_parser("ban", help="ban an address or network by hand")
    bn.add_argument("target", metavar="TARGET", help="address or CIDR")
    bn.add_argument("--for", dest="duration", metavar="DURATION",
                    help="how long (90s, 10m, 12h, 3d, 2w, or permanent; default: ban.durations.manual)")
    bn.add_argument("--reason", default="", metavar="TEXT", help="why, for the record")
    bn.add_argument("--dry-run", action="store_true", help="record as dry-run, never enforce")

    ub = sub.add_parser("unban", help="lift bans and clear the score of addresses or networks")
    ub.add_argument("targets", nargs="+", metavar="TARGET", help="address or CIDR (a network ban covering it is lifted)")

    sh = sub.add_parser("show", help="what logban knows about an address or network: score, offences, bans, why")
    sh.add_argument("target", metavar="TARGET")
    sh.add_argument("--json", action="store_true")
    sh.add_argument("--offences", type=_count, default=20, metavar="N", help="recent offences shown (default 20)")

    st = sub.add_parser("stats", help="offences and bans by kind, top offenders")
    st.add_argument("--since", metavar="DURATION", help="only the last DURATION (like 24h, 7d)")
    st.add_argument("--json", action="store_true")
    st.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")

    tr = sub.add_parser("test-rules", help="show what the rules make of a log file")
    tr.add_argument("file", metavar="FILE")
    tr.add_argument("--rule", metavar="ID", help="only this rule")
    tr.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack")
    tr.add_argument("--samples", type=_count, default=3, metavar="N", help="matched lines shown per rule (default 3)")
    tr.add_argument("--unmatched", type=_count, default=20, metavar="N", help="suspicious unmatched lines shown (default 20)")

    rn = sub.add_parser("run", help="the daemon: follow logs, ban, release, for as long as it runs")
    rn.add_argument("--follow", action="append", type=Path, default=[], metavar="PATH",
                    help="a log to follow (repeatable; adds to [[follow]] in the config)")
    rn.add_argument("--dry-run", action="store_true", help="decide and record, never touch the firewall")
    rn.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")
    sub.add_parser("reload", help="make the running daemon reload its config and rule packs (SIGHUP)")

    ex = sub.add_parser("export", help="the active bans as a DNSBL zone or an MTA access map")
    ex.add_argument("--format", required=True, choices=("rbldnsd", "rbldnsd6", "postfix", "postfix-hash",
                                                        "sendmail", "plain", "json"))
    ex.add_argument("-o", "--output", type=Path, metavar="FILE",
                    help="replace FILE atomically (and build the map: postmap, makemap) instead of printing")
    ex.add_argument("--action", default="REJECT", help='postfix/sendmail: REJECT (default) or a code like "554 5.7.1"')

    fw = sub.add_parser("firewall", help="the kernel firewall: status, sync with the store, teardown")
    fsub = fw.add_subparsers(dest="firewall_command", required=True, metavar="SUBCOMMAND", parser_class=_Args)
    fs = fsub.add_parser("status", help="backend, table, sets, chains, element counts and drift from the store")
    fs.add_argument("--json", action="store_true")
    fsub.add_parser("sync", help="make the kernel hold exactly the active bans (re-adds, removes, refreshes)")
    fsub.add_parser("teardown", help="remove everything logban created in the firewall (bans stay in the store)")

    rp = sub.add_parser("rules", help="rule pack tools")
    rsub = rp.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND", parser_class=_Args)
    ck = rsub.add_parser("check", help="validate and lint rule packs and run their tests")
    ck.add_argument("dir", nargs="?", type=Path, metavar="DIR", help="a directory of packs layered over the shipped ones")
    return ap
