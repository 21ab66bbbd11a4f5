"""Release ids, the rollback walk and pruning rules."""

import datetime

from siteops import model, releases
from siteops.model import Live, Release, Site

OK, FAILED = model.OK, model.FAILED


def site_with(results: dict, live: str | None, left=()) -> Site:
    recs = {rid: Release(result=r, rolled_back=rid in left) for rid, r in results.items()}
    return Site(name="shop", slot=0, releases=recs, live=Live(live) if live else None)


def ids(n: int) -> list[str]:
    return [f"20261125T2000{i:02d}Z" for i in range(n)]


def test_new_ids_are_utc_timestamps_made_unique():
    when = datetime.datetime(2026, 11, 25, 20, 15, 0, tzinfo=datetime.timezone.utc)
    site = site_with({"20261125T201500Z": OK, "20261125T201500Z-2": OK}, None)
    assert releases.new_id(site_with({}, None), when) == "20261125T201500Z"
    assert releases.new_id(site, when) == "20261125T201500Z-3"
    site.releases["20261125T201500Z-10"] = Release()
    assert releases.ordered(site)[-1] == "20261125T201500Z-10"


def test_rollback_walks_back_over_failed_and_left_releases():
    r = ids(5)
    site = site_with({r[0]: OK, r[1]: OK, r[2]: FAILED, r[3]: OK, r[4]: OK}, live=r[3], left={r[4]})
    assert releases.rollback_target(site) == r[1]  # skips the failed one; never forward to r[4]
    site = site_with({r[0]: OK, r[1]: OK}, live=r[1], left={r[0]})
    assert releases.rollback_target(site) is None
    assert releases.rollback_target(site_with({r[0]: OK}, live=None)) is None


def test_two_rollbacks_go_two_back():
    r = ids(3)
    site = site_with({r[0]: OK, r[1]: OK, r[2]: OK}, live=r[2])
    first = releases.rollback_target(site)
    site = site_with({r[0]: OK, r[1]: OK, r[2]: OK}, live=first, left={r[2]})
    assert (first, releases.rollback_target(site)) == (r[1], r[0])


def test_prune_takes_failed_first_and_keeps_the_newest_good():
    r = ids(9)
    results = {rid: OK for rid in r} | {r[2]: FAILED, r[5]: FAILED}
    site = site_with(results, live=r[8])
    # good: r0 r1 r3 r4 r6 r7 r8; the newest five stay
    assert releases.to_prune(site, keep=5) == [r[2], r[5], r[0], r[1]]


def test_prune_never_takes_the_live_release_or_the_rollback_target():
    r = ids(6)
    # Live is an old release after rollbacks; its rollback target is older still.
    site = site_with({rid: OK for rid in r}, live=r[1], left={r[2], r[3], r[4], r[5]})
    doomed = releases.to_prune(site, keep=2)
    assert r[1] not in doomed and r[0] not in doomed and doomed == [r[2], r[3]]


def test_stale_releases_are_the_ones_still_building():
    r = ids(3)
    site = site_with({r[0]: OK, r[1]: model.BUILDING, r[2]: OK}, live=r[2])
    assert releases.stale(site) == [r[1]]
