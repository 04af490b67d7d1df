"""sandbox/mongod.py: the tests' mongods keep their data directories small."""
from __future__ import annotations

from mongo_migrate.sandbox.mongod import SMALL_JOURNAL_MB, Mongod


def test_a_test_mongod_journals_in_small_files_made_as_needed(tmp_path):
    """A suite starts dozens of mongods; each journaled into three 100 MB files made ahead (~300 MB a
    data directory, 7-8 GB a suite). Journaling itself is on: the data survive a SIGKILL."""
    mongod = Mongod(tmp_path / "db", replset="small").start()
    try:
        client = mongod.client()
        client.t.c.insert_many([{"_id": i, "pad": "x" * 1000} for i in range(5000)])
        journal = sorted(p.name for p in (tmp_path / "db" / "journal").iterdir())
        assert journal and not [name for name in journal if "Prep" in name], journal
        sizes = [(tmp_path / "db" / "journal" / name).stat().st_size for name in journal]
        assert max(sizes) <= SMALL_JOURNAL_MB * 2**20, sizes
        mongod.kill()
        mongod.start()
        assert mongod.client().t.c.count_documents({}) == 5000
    finally:
        mongod.destroy()
