from logban import report
from logban.parse import Offence
from logban.report import ScanSummary


def test_distributed_attack_keeps_the_summary_bounded_and_linear(monkeypatch):
    monkeypatch.setattr(report, "TRACK_MAX", 100)
    s = ScanSummary()
    shrinks = []
    real = s._shrink
    monkeypatch.setattr(s, "_shrink", lambda: (shrinks.append(1), real()))
    heavy = [Offence(1.0, "192.0.2.7", "postfix", "r", "dnsbl", 5.0, "f", 1, b"")] * 50
    s.add(heavy)
    s.add([Offence(2.0, f"2001:db8::{i:x}", "postfix", "r", "auth_failed", 1.0, "f", i, b"") for i in range(10_000)])
    assert len(s.clients) <= 101
    # One shrink per TRACK_MAX/2 new addresses, not one per address once the limit is reached.
    assert len(shrinks) <= 10_000 // 50 + 1
    assert s.approximate
    assert s.top(1)[0][0] == "192.0.2.7" and s.top(1)[0][1].count == 50
    assert sum(s.by_kind.values()) == 10_050
