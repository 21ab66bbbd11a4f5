"""backup --verify: the dump's rows per table as its COPY data counts them,
the restored tree against the snapshot's listing, and what audit says of a
site's last verification (the box tier restores real snapshots)."""

import subprocess

import pytest

import test_checks
from siteops import site_checks, verify
from siteops.model import Site

DUMP_DATA = r"""--
-- PostgreSQL database dump
--
SET statement_timeout = 0;

COPY public.notes (k, v) FROM stdin;
k1	one
k2	two\nlines
k3	back\\slash
\.


COPY public."Odd (name)" (id) FROM stdin;
\.


COPY "we""ird.schema".orders (id, note) FROM stdin;
1	\.x
2	COPY public.fake (a) FROM stdin;
\.

"""


def test_rows_are_counted_per_table_from_the_dumps_copy_data():
    out = subprocess.run(["awk", verify.ROWS_PER_TABLE], input=DUMP_DATA, text=True,
                         capture_output=True, check=True).stdout
    rows = dict(line.rsplit("\t", 1) for line in out.splitlines())
    assert rows == {"public.notes": "3", 'public."Odd (name)"': "0", '"we""ird.schema".orders': "2"}


def test_the_restored_tree_is_compared_with_the_snapshots_listing(tmp_path):
    (tmp_path / "srv/uploads").mkdir(parents=True)
    (tmp_path / "srv/uploads/a.txt").write_text("abc")
    (tmp_path / "srv/uploads/b.txt").write_text("ab")
    listing = {"/srv/uploads/a.txt": 3, "/srv/uploads/b.txt": 3, "/srv/uploads/c.txt": 1}
    assert verify.compare_files(tmp_path, listing) == [
        "/srv/uploads/b.txt is 2 bytes, the snapshot says 3", "/srv/uploads/c.txt not restored"]
    assert verify.compare_files(tmp_path, {"/srv/uploads/a.txt": 3}) == []


NOW = "2026-11-30T12:00:00Z"


@pytest.mark.parametrize("result, created, severity, words", [
    (None, "2026-11-29T12:00:00Z", "ok", "not verified yet"),
    (None, "2026-11-01T12:00:00Z", "warning", "never verified"),
    ({"time": "2026-11-27T12:00:00Z", "ok": True, "snapshot": "ab12cd34", "error": None},
     "2026-11-01T12:00:00Z", "ok", "verified 3 day(s) ago (snapshot ab12cd34)"),
    ({"time": "2026-11-20T12:00:00Z", "ok": True, "snapshot": "ab12cd34", "error": None},
     "2026-11-01T12:00:00Z", "warning", "last verified 10 days ago"),
    ({"time": "2026-11-29T12:00:00Z", "ok": False, "snapshot": "", "error": "dump does not load"},
     "2026-11-01T12:00:00Z", "warning", "failed: dump does not load"),
])
def test_audit_warns_of_backups_not_verified_for_8_days_or_failed(result, created, severity,
                                                                  words):
    facts = {"time": NOW, "backup": {"verified": {"shop": result} if result else {}}}
    f = site_checks.verified_check(Site("shop", ["shop.test"], created=created), facts)
    assert f.severity == severity and words in f.message and f.id == "site.shop.backup_verified"


def test_a_stopped_verification_timer_is_reported():
    found = {f.id: f for f in test_checks.findings(
        lambda f: f["units"]["siteops-verify.timer"].update(active="inactive"))}
    assert found["host.backup"].severity == "warning"
    assert "siteops-verify.timer is inactive" in found["host.backup"].message
