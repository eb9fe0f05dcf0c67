"""`scan --apply` and its store, in this process."""
import json
import time

from logban.cli import main
from logban.store import BULK_CACHE_MIB, Store, writes


def test_scan_apply_records_through_a_bulk_page_cache(tmp_path, monkeypatch, capsys):
    """The writes of scan --apply go through a connection with the bulk page cache, and the
    store it leaves is opened by others with SQLite's default."""
    seen = []
    record = writes.Writes.record

    def spy(self, *a, **kw):
        with self.read() as c:
            seen.append(c.exec_driver_sql("PRAGMA cache_size").scalar())
        return record(self, *a, **kw)
    monkeypatch.setattr(writes.Writes, "record", spy)
    stamp = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() - 60))
    log = tmp_path / "mail.log"
    log.write_text("".join(f"{stamp} mx postfix/smtpd[7]: warning: unknown[192.0.2.{i}]: SASL LOGIN authentication "
                           "failed: UGFzc3dvcmQ6\n" for i in range(1, 4)))
    cfg = tmp_path / "logban.toml"
    cfg.write_text("")
    db = f"sqlite:///{tmp_path}/t.db"
    assert main(["-c", str(cfg), "--db", db, "--backend", "none", "scan", "--apply", "--json", "--no-progress",
                 "--jobs", "1", str(log)]) == 0
    recorded = json.loads(capsys.readouterr().out)["applied"]["offences"]
    assert seen and set(seen) == {-1024 * BULK_CACHE_MIB}
    s = Store(db)
    with s.write() as c:
        assert c.exec_driver_sql("PRAGMA cache_size").scalar() == -2000
        assert c.exec_driver_sql("SELECT count(*) FROM offences").scalar() == recorded > 0
    s.close()
