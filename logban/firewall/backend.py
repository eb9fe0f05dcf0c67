"""What every backend offers, the one that enforces nothing, and the helpers they share."""
from __future__ import annotations

import shutil
import subprocess
from collections.abc import Container, Iterable, Mapping

from ..errors import FirewallError
from .plan import FirewallOptions


# The Debian package of each tool a backend runs (`nft` is in nftables).
PACKAGE = {"nft": "nftables", "iptables-legacy": "iptables", "ip6tables": "iptables", "ip": "iproute2"}


def _run(cmd: list[str], stdin: str | None = None) -> str:
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise FirewallError(f"{cmd[0]}: command not found; install the package {PACKAGE.get(cmd[0], cmd[0])}") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{' '.join(cmd[:3])}: no answer in 300 s") from None
    if r.returncode != 0:
        err = next((ln for ln in r.stderr.splitlines() if "rror" in ln), None) or r.stderr.strip() or "failed"
        raise FirewallError(f"{' '.join(cmd[:3])}: {err.strip()[:300]}")
    return r.stdout


def iptables_mode() -> str | None:
    """"nf_tables" or "legacy": which kernel tables this host's `iptables` command writes."""
    if shutil.which("iptables") is None:
        return None
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "nf_tables" if "nf_tables" in out else "legacy"


def _by_family(targets: Iterable[str]) -> tuple[list[str], list[str]]:
    v4, v6 = [], []
    for t in targets:
        (v6 if ":" in t else v4).append(t)
    return v4, v6


class Backend:
    """Set up, apply a batch, list what the kernel holds, describe, tear down."""

    name = "none"
    kernel_timeouts = True
    # Prefix lengths, per IP version, of targets that go where the kernel refuses an
    # element inside another (see `wanted`): none here, overlapping elements are fine.
    exclusive: Mapping[int, Container[int]] = {4: (), 6: ()}

    def __init__(self, opts: FirewallOptions) -> None:
        self.opts = opts

    def setup(self) -> None:
        pass

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str], *, fresh: bool = False) -> None:
        """One batch: `remove` taken out whether the kernel holds it or not (nothing is listed
        first: a ban or unban at 100,000 elements touches its own only), then `add` put in
        with these timeouts; a target in both is written afresh. `fresh`: `setup` ran just
        before, in this process (a sync), so what it makes is there as it made it."""


    def elements(self) -> dict[str, int | None]:
        """target -> kernel seconds left (None: no timeout)."""
        return {}

    def outdated(self) -> bool:
        """Whether the kernel holds an older logban's layout, which only `setup` moves in."""
        return False

    def describe(self) -> dict:
        return {}

    def teardown(self) -> None:
        pass


class NoBackend(Backend):
    """Records only: decisions are kept in the store and never enforced."""
