"""logban's rules in the iptables INPUT/FORWARD chains, shared by the ipset and iptables backends."""
from __future__ import annotations

import contextlib
import ctypes.util
import glob
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator

from ..errors import FirewallError
from .backend import _run
from .plan import FirewallOptions


def _iptc():
    """python-iptables, told where the xtables extensions live (it does not look in Debian's multiarch path)."""
    if "XTABLES_LIBDIR" not in os.environ:
        for d in [*glob.glob("/usr/lib/*/xtables"), "/usr/lib/xtables", "/usr/lib64/xtables", "/lib/xtables"]:
            if os.path.isdir(d):
                os.environ["XTABLES_LIBDIR"] = d
                break
    try:
        iptc = _import_iptc()
    except Exception as e:
        raise FirewallError(f"python-iptables cannot load libiptc: {e}") from None
    return iptc


def _import_iptc():
    """python-iptables asks distutils for the library path (`get_python_lib`), and
    setuptools' distutils shim (its `distutils-precedence.pth`) answers by importing all of
    setuptools: 0.1 s of every sync. The shim is set aside for this one import: the
    standard library's distutils answers (Python 3.11), or, where there is none,
    python-iptables falls back to sysconfig itself. Its libraries are looked up in one
    `ldconfig -p` listing (`_ld_cache`); should that fail to load them, ctypes' own search
    is tried as before."""
    shims = [f for f in sys.meta_path if type(f).__module__ == "_distutils_hack"]
    for f in shims:
        sys.meta_path.remove(f)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)       # the standard distutils' own
            try:
                with _ld_cache():
                    import iptc
            except Exception:
                for name in [m for m in sys.modules if m == "iptc" or m.startswith("iptc.")]:
                    del sys.modules[name]
                import iptc
    finally:
        sys.meta_path[0:0] = shims
    return iptc


# ldconfig's ABI tag of this machine's libraries, as ctypes.util reads it (64-bit hosts).
_LD_ABI = {"x86_64": "libc6,x86-64", "ppc64": "libc6,64bit", "sparc64": "libc6,64bit", "s390x": "libc6,64bit",
           "ia64": "libc6,IA-64"}


@contextlib.contextmanager
def _ld_cache() -> Iterator[None]:
    """`ctypes.util.find_library` answered from one `ldconfig -p` listing. Importing
    python-iptables asks it for a dozen names (libc, libxtables, libip4tc, libip6tc, and its
    own libxtwrapper in four spellings), and ctypes runs ldconfig for each, then gcc and ld
    for each ldconfig does not know (libxtwrapper, which python-iptables then finds beside
    itself): twenty processes, 0.1 s of every sync of the ipset and iptables backends."""
    real, listing = ctypes.util.find_library, None
    abi = _LD_ABI.get(os.uname().machine, "libc6") if sys.maxsize > 2**32 else "libc6"

    def find(name: str) -> str | None:
        nonlocal listing
        if listing is None:
            try:
                listing = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, timeout=10,
                                         env={"LC_ALL": "C", "LANG": "C"}).stdout
            except (OSError, subprocess.TimeoutExpired):
                listing = b""
        got = re.search(rb"\s(lib%s\.\S+)\s+\(%s" % (re.escape(os.fsencode(name)), re.escape(abi.encode())), listing)
        return os.fsdecode(got.group(1)) if got else None

    ctypes.util.find_library = find
    try:
        yield
    finally:
        ctypes.util.find_library = real


def _filter_table(v6: bool):
    """libiptc's filter table (IPv4 or IPv6), read afresh."""
    iptc = _iptc()
    t = iptc.Table6(iptc.Table6.FILTER) if v6 else iptc.Table(iptc.Table.FILTER)
    t.refresh()
    return t


class _Hooks:
    """logban's rules in the INPUT (and FORWARD) chains, marked with the comment "logban".

    Written with python-iptables where the host's iptables is legacy, and with the
    iptables commands where it is nf_tables, so `iptables -S` shows them either way.
    """

    COMMENT = "logban"

    def __init__(self, mode: str | None, chains: list[str]) -> None:
        self.mode, self.chains = mode, chains

    def specs(self, opts: FirewallOptions, v6: bool, match: list[str], jump: str) -> list[str]:
        m = list(match)
        if opts.ports:
            m += ["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, opts.ports))]
        m += ["-m", "comment", "--comment", self.COMMENT]
        if jump == "REJECT":
            m += ["-j", "REJECT"] + (["--reject-with", "tcp-reset"] if opts.ports else [])
        else:
            m += ["-j", jump]
        return m

    def install(self, rules: dict[bool, list[str]]) -> None:
        """Exactly these rules (per family: v6 True/False) at the head of each hooked chain.
        Rules already in place are left as they are: every sync sets up, and taking them out
        to put them back would open a moment in which banned clients connect."""
        if self._in_place(rules):
            return
        self.remove()
        for v6, spec in rules.items():
            for chain in self.chains:
                if self.mode == "legacy":
                    self._iptc_insert(v6, chain, spec)
                else:
                    _run(["ip6tables" if v6 else "iptables", "-w", "-I", chain, "1", *spec])

    HOOKED = [(v6, chain) for v6 in (False, True) for chain in ("INPUT", "FORWARD")]

    def _listed(self, v6: bool, chain: str) -> tuple[list, list] | None:
        """(the chain's rules, logban's among them): python-iptables rules in legacy mode,
        `iptables -S` lines otherwise; None where the command is not installed."""
        if self.mode == "legacy":
            t = _filter_table(v6)
            have = list(_iptc().Chain(t, chain).rules) if t.is_chain(chain) else []
            return have, [r for r in have if self._ours(r)]
        cmd = "ip6tables" if v6 else "iptables"
        if shutil.which(cmd) is None:
            return None
        have = [ln for ln in _run([cmd, "-w", "-S", chain]).splitlines() if ln.startswith(f"-A {chain} ")]
        return have, [ln for ln in have if f"--comment {self.COMMENT} " in ln]

    def _in_place(self, rules: dict[bool, list[str]]) -> bool:
        """Each hooked chain holds one rule of ours per family, first, and it is this one; the
        other chains none."""
        for v6, chain in self.HOOKED:
            spec = rules.get(v6) if chain in self.chains else None
            listed = self._listed(v6, chain)
            if listed is None:
                if spec is None:
                    continue
                return False
            have, ours = listed
            if spec is None:
                if ours:
                    return False
                continue
            if len(ours) != 1 or have[0] is not ours[0]:
                return False
            same = (ours[0] == self._iptc_rule(v6, spec) if self.mode == "legacy"
                    else _holds("ip6tables" if v6 else "iptables", chain, spec))
            if not same:
                return False
        return True

    def remove(self) -> None:
        for v6, chain in self.HOOKED:
            if self.mode == "legacy":
                self._iptc_remove(v6, chain)
                continue
            listed = self._listed(v6, chain)
            for line in listed[1] if listed else ():
                _run(["ip6tables" if v6 else "iptables", "-w", "-D", *shlex.split(line)[1:]])

    def present(self) -> list[str]:
        out = []
        for v6, chain in self.HOOKED:
            listed = self._listed(v6, chain)
            for r in listed[1] if listed else ():
                if self.mode == "legacy":
                    out.append(f"{'ip6' if v6 else 'ip'}tables-legacy {chain}: "
                               f"{' '.join('-m ' + m.name for m in r.matches)} -j {r.target.name}")
                else:
                    out.append(f"{'ip6tables' if v6 else 'iptables'} {r}")
        return out

    # python-iptables: the rule is parsed from the same iptables-style words.

    def _ours(self, r) -> bool:
        return any(m.name == "comment" and m.comment == self.COMMENT for m in r.matches)

    def _iptc_insert(self, v6: bool, chain: str, spec: list[str]) -> None:
        _iptc().Chain(_filter_table(v6), chain).insert_rule(self._iptc_rule(v6, spec))

    @staticmethod
    def _iptc_rule(v6: bool, spec: list[str]):
        iptc = _iptc()
        r = iptc.Rule6() if v6 else iptc.Rule()
        words = list(spec)
        while words:
            w = words.pop(0)
            if w == "-p":
                r.protocol = words.pop(0)
            elif w in ("-m", "-j"):
                ext = (r.create_match if w == "-m" else r.create_target)(words.pop(0))
                while words and words[0].startswith("--"):
                    opt, vals = words.pop(0)[2:].replace("-", "_"), []
                    while words and not words[0].startswith("-"):
                        vals.append(words.pop(0))     # --match-set takes two words
                    setattr(ext, opt, vals if len(vals) > 1 else vals[0])
        return r

    def _iptc_remove(self, v6: bool, chain: str) -> None:
        iptc = _iptc()
        t = _filter_table(v6)
        if not t.is_chain(chain):
            return
        t.autocommit = False
        c = iptc.Chain(t, chain)
        for r in [r for r in c.rules if self._ours(r)]:
            c.delete_rule(r)
        t.commit()
        t.autocommit = True


def _holds(cmd: str, chain: str, spec: list[str]) -> bool:
    """Whether `chain` has this rule (`iptables -C`, the kernel's own comparison)."""
    try:
        _run([cmd, "-w", "-C", chain, *spec])
        return True
    except FirewallError:
        return False


def _src(src: str) -> str:
    """libiptc's "address/netmask" as the store spells the target."""
    addr, _, mask = src.partition("/")
    a = ipaddress.ip_address(addr)
    plen = int(ipaddress.ip_address(mask)).bit_count() if mask and not mask.isdigit() else int(mask or a.max_prefixlen)
    return addr if plen == a.max_prefixlen else f"{addr}/{plen}"
