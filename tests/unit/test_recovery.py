"""Disaster recovery brings back exactly the host that was backed up: which
sites `restore --all` restores, and every restored or moved site's .env
leading to its own services (envfile.bind); the Redis AUTH probe audit uses."""

import json
import socket
import threading

import pytest

from siteops import backup, envfile, model, redis
from siteops.commands import restore
from siteops.ops import restore as restore_op

from fakes import make_host

SHOP = model.Site(name="shop", slot=2, components=["frontend"],
                  ports={"frontend": 3120, "redis": 5020})
DB_PORT = 5432


def env(redis_url, database_url="postgresql://shop:dbpass@localhost:5432/shop"):
    return (f"# mine\nNODE_ENV=production\nDATABASE_URL={database_url}\n"
            f"REDIS_URL={redis_url}\nSESSION_SECRET=s3cr3t\nAPP_KEY=kept\n")


def test_a_url_to_the_slot_the_site_was_backed_up_in_is_pointed_at_its_own_redis():
    text = env("redis://default:r3dis@127.0.0.1:5010/0")
    bound = envfile.bind(text, SHOP, DB_PORT)
    assert bound == env("redis://default:r3dis@127.0.0.1:5020/0")  # password and lines kept


@pytest.mark.parametrize("url", [
    "redis://default:r3dis@127.0.0.1:5020/0",
    "redis://:r3dis@localhost:5020/3",        # any database number of its own instance
    "redis://default:r3dis@[::1]:5020",
])
def test_a_url_already_leading_home_is_left_exactly_as_it_is(url):
    text = env(url)
    assert envfile.points_home("REDIS_URL", url, SHOP, DB_PORT)
    assert envfile.bind(text, SHOP, DB_PORT) == text


@pytest.mark.parametrize("url, bound", [
    ("redis://default:r3dis@10.0.0.9:5020/2", "redis://default:r3dis@127.0.0.1:5020/2"),
    ("redis://default:r3dis@127.0.0.1:6379/0?timeout=5",
     "redis://default:r3dis@127.0.0.1:5020/0?timeout=5"),
    ("redis://admin:r3dis@127.0.0.1:5020/0", "redis://default:r3dis@127.0.0.1:5020/0"),
    ("rediss://default:r3dis@127.0.0.1:5020/x", "redis://default:r3dis@127.0.0.1:5020/0"),
])
def test_a_url_leading_anywhere_else_is_pointed_home_keeping_password_and_query(url, bound):
    assert not envfile.points_home("REDIS_URL", url, SHOP, DB_PORT)
    assert envfile.parse(envfile.bind(env(url), SHOP, DB_PORT))["REDIS_URL"] == bound


@pytest.mark.parametrize("url", [
    "postgresql://shop:dbpass@localhost:5433/shop",      # another cluster's port
    "postgresql://blog:dbpass@localhost:5432/blog",      # a neighbour's role and database
    "postgresql://shop:dbpass@db.example.com:5432/shop",
    "postgres://shop:dbpass@localhost:5432/shop_old",
])
def test_a_database_url_is_the_site_role_on_the_host_cluster(url):
    bound = envfile.parse(envfile.bind(env("redis://default:r@127.0.0.1:5020/0", url),
                                       SHOP, DB_PORT))
    assert bound["DATABASE_URL"] == "postgresql://shop:dbpass@localhost:5432/shop"
    assert envfile.points_home("DATABASE_URL", "postgres://shop:p@127.0.0.1:5432/shop",
                               SHOP, DB_PORT)


def test_a_url_without_a_password_gets_a_new_one_the_services_then_take():
    bound = envfile.parse(envfile.bind(env("redis://127.0.0.1:5010"), SHOP, DB_PORT))
    password = envfile.passwords(envfile.assign("", bound))[1]
    assert len(password) >= 40 and bound["REDIS_URL"].endswith("@127.0.0.1:5020/0")


def test_add_site_merge_also_leads_home():
    merged = envfile.merge(env("redis://default:r3dis@127.0.0.1:5010/0"), SHOP, DB_PORT)
    assert "REDIS_URL=redis://default:r3dis@127.0.0.1:5020/0\n" in merged
    assert merged.startswith("# mine\n") and "APP_KEY=kept\n" in merged


# -- which sites restore --all brings back ------------------------------------

def snap(sid, time, *tags):
    return {"id": sid * 8, "short_id": sid * 8, "time": time, "tags": list(tags)}


def recovery_of(root, snaps, registry_sites):
    dump = json.dumps({"version": 2, "sites": registry_sites})
    host, runner = make_host(root, [(["restic", "--quiet", "snapshots"], 0, json.dumps(snaps)),
                                    (["restic", "--quiet", "dump"], 0, dump)])
    return backup.recovery(host), runner


def test_the_sites_of_the_last_host_state_come_back_and_a_removed_one_does_not(root):
    snaps = [snap("a", "2026-11-29T00:10:00.1Z", "site:shop"),
             snap("b", "2026-11-29T00:10:05Z", "site:blog"),
             snap("c", "2026-11-29T00:10:09Z", "host"),
             snap("d", "2026-11-29T09:00:00Z", "site:blog", "removed"),  # remove-site blog
             snap("e", "2026-11-29T09:00:07Z", "host"),                  # ... and its host state
             snap("f", "2026-11-29T10:00:00Z", "site:press"),            # added and backed up
             snap("g", "2026-11-29T11:00:00Z", "site:shop", "before-restore")]
    plan, runner = recovery_of(root, snaps, {"shop": {"state": "ready"}})
    assert (plan.sites, plan.removed, plan.missing) == (["press", "shop"], ["blog"], [])
    assert plan.host_snapshot["id"] == "eeeeeeee"
    dump = next(c for c in runner.calls if c[2] == "dump")
    assert dump == ["restic", "--quiet", "dump", "eeeeeeee",
                    str(root / "var/lib/siteops/registry.json")]


def test_a_final_snapshot_taken_after_the_host_state_still_leaves_the_site_out(root):
    # remove-site could not record the host's state afterwards (repository away).
    snaps = [snap("a", "2026-11-29T00:10:00Z", "site:blog"), snap("b", "2026-11-29T00:10:05Z",
                                                                  "host"),
             snap("c", "2026-11-29T09:00:00Z", "site:blog", "removed")]
    plan, _ = recovery_of(root, snaps, {"blog": {"state": "ready"}})
    assert (plan.sites, plan.removed) == ([], ["blog"])


def test_a_site_removed_without_a_final_backup_stays_out_and_one_never_backed_up_is_named(root):
    snaps = [snap("a", "2026-11-29T00:10:00Z", "site:blog"),
             snap("b", "2026-11-29T00:10:05Z", "site:shop"),
             snap("c", "2026-11-29T09:00:07Z", "host")]  # remove-site blog --no-backup
    plan, _ = recovery_of(root, snaps, {"shop": {"state": "ready"}, "wiki": {"state": "ready"},
                                        "gone": {"state": "removing"}})
    assert (plan.sites, plan.removed, plan.missing) == (["shop"], ["blog"], ["wiki"])


def test_without_a_host_state_restore_all_refuses_and_says_what_to_do(root):
    with pytest.raises(Exception, match="name the sites to restore"):
        recovery_of(root, [snap("a", "2026-11-29T00:10:00Z", "site:shop")], {})


def test_restore_all_prints_its_plan_before_anything_changes(root):
    snaps = [snap("a", "2026-11-29T00:10:00Z", "site:shop"),
             snap("b", "2026-11-29T00:10:01Z", "site:blog", "removed"),
             snap("c", "2026-11-29T00:10:09Z", "host")]
    dump = json.dumps({"version": 2, "sites": {"shop": {"state": "ready"},
                                               "wiki": {"state": "ready"}}})
    host, _ = make_host(root, [(["restic", "--quiet", "snapshots"], 0, json.dumps(snaps)),
                               (["restic", "--quiet", "dump"], 0, dump)])
    plan = restore_op.plan_all(host)
    out = host.out.getvalue()
    assert plan.sites == ["shop"]
    assert "recreate     shop\n" in out
    assert "left out     blog (removed from the host; `restore NAME --yes` brings one back)" in out
    assert "no backup    wiki (never backed up: cannot be restored)" in out
    assert host.actions == []


# -- the Redis AUTH probe -----------------------------------------------------

@pytest.fixture
def fake_redis():
    """A loopback server answering AUTH like Redis: +OK for default/right, else WRONGPASS."""
    server = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve():
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                data = conn.recv(512)
                received.append(data)
                ok = data.endswith(b"$7\r\ndefault\r\n$5\r\nright\r\n")
                conn.sendall(b"+OK\r\n" if ok else b"-WRONGPASS invalid username-password\r\n")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    server.close()


def test_redis_accepts_speaks_auth_and_reads_the_answer(fake_redis):
    port, received = fake_redis
    assert redis.accepts(port, "default", "right") is True
    assert redis.accepts(port, "default", "wrong") is False
    assert received[0] == b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$5\r\nright\r\n"


def test_redis_accepts_is_none_when_nothing_listens():
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert redis.accepts(port, "default", "x", timeout=0.5) is None


def test_restore_all_dry_run_prints_the_plan_and_changes_nothing(root):
    snaps = [snap("a", "2026-11-29T00:10:00Z", "site:shop"),
             snap("c", "2026-11-29T00:10:09Z", "host")]
    dump = json.dumps({"version": 2, "sites": {"shop": {"state": "ready"}}})
    (root / "etc/siteops").mkdir(parents=True)
    (root / "etc/siteops/restic-password").write_text("pw\n")
    host, runner = make_host(root, [
        (["restic", "--quiet", "snapshots", "--json", "--no-lock", "--tag", "site:shop"], 0,
         json.dumps(snaps[:1])),
        (["restic", "--quiet", "snapshots"], 0, json.dumps(snaps)),
        (["restic", "--quiet", "dump"], 0, dump),
        (["restic", "--quiet", "cat", "config"], 0, "{}")])
    assert restore.main(["--all", "--yes", "--dry-run"], host) == 0
    out = host.out.getvalue()
    assert "recreate     shop" in out and "restore shop from snapshot aaaaaaaa" in out
    assert out.rstrip().endswith("would restore 1 site(s)")
    assert host.actions == [] and all(c[2] in ("snapshots", "dump", "cat") for c in runner.calls)
