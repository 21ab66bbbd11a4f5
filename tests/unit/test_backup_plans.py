"""backup, restore and remove-site: argument checks, restic's environment and
the command plans, with a recording fake runner."""

import json

import pytest

from siteops import backup
from siteops.commands import backup as backup_command
from siteops.commands import remove_site, restore

from fakes import make_host, planned_commands

SHOP = {"name": "shop", "slot": 0, "state": "ready", "domains": ["shop.test"],
        "components": ["frontend"], "ports": {"frontend": 3100, "redis": 5000},
        "created": "2026-11-20T10:00:00Z"}
ACCOUNTS = "shop:x:1001:1001:siteops site shop:/srv/sites/shop:/usr/sbin/nologin\n"


def with_registry(root, *sites):
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(
        {"version": 2, "sites": {s["name"]: s for s in sites}}))


def test_audit_reads_the_repository_with_one_listing_that_also_says_why_it_cannot(root):
    snaps = [{"time": "2026-11-26T12:20:01.5+01:00", "tags": ["site:shop"]},
             {"time": "2026-11-27T01:00:00Z", "tags": ["site:shop", "final"]},
             {"time": "2026-11-25T01:00:00Z", "tags": ["site:blog"]}]
    host, runner = make_host(root, [(["restic"], 0, json.dumps(snaps))])
    assert backup.facts(host) == {"error": "no repository password in "
                                           f"{root}/etc/siteops/restic-password", "latest": {}}
    assert runner.calls == []
    (root / "etc/siteops").mkdir()
    (root / "etc/siteops/restic-password").write_text("pw\n")
    assert backup.facts(host) == {"error": None, "latest": {"shop": "2026-11-27T01:00:00Z",
                                                            "blog": "2026-11-25T01:00:00Z"}}
    assert runner.calls == [["restic", "--quiet", "snapshots", "--json", "--no-lock"]]
    host, _ = make_host(root, [(["restic"], 1, "", "Fatal: wrong password or no key found\n")])
    assert backup.facts(host)["error"] == "Fatal: wrong password or no key found"


def test_restic_reads_its_password_from_a_file_and_credentials_from_backup_env(root):
    host, _ = make_host(root)
    (root / "etc/siteops").mkdir()
    (root / "etc/siteops/backup.env").write_text(
        "RESTIC_REPOSITORY=s3:s3.example.com/bucket\nAWS_SECRET_ACCESS_KEY=abc123secret\n"
        "KEEP_DAILY=14\n")
    env = backup.restic_env(host)
    assert env == {"RESTIC_REPOSITORY": "s3:s3.example.com/bucket",
                   "AWS_SECRET_ACCESS_KEY": "abc123secret",
                   "RESTIC_PASSWORD_FILE": str(root / "etc/siteops/restic-password"),
                   "RESTIC_CACHE_DIR": str(root / "var/cache/siteops/restic")}
    assert backup.settings(host)["KEEP_DAILY"] == "14"
    assert backup.settings(host)["KEEP_MONTHLY"] == "6"


def test_a_bad_retention_in_backup_env_is_a_clear_error(root):
    host, _ = make_host(root)
    (root / "etc/siteops").mkdir()
    (root / "etc/siteops/backup.env").write_text("KEEP_DAILY=lots\n")
    with pytest.raises(Exception, match="KEEP_DAILY must be a whole number"):
        backup.settings(host)


@pytest.mark.parametrize("when, utc", [
    ("2026-11-26T12:20:01.123456789Z", "2026-11-26T12:20:01Z"),
    ("2026-11-26T13:20:01.5+01:00", "2026-11-26T12:20:01Z"),
    ("2026-11-26T12:20:01+00:00", "2026-11-26T12:20:01Z"),
])
def test_restic_times_become_utc(when, utc):
    assert backup.utc(when) == utc


@pytest.mark.parametrize("argv, message", [
    (["--repository", "relative/path"], "invalid --repository"),
    (["--repository", "ftp:host/x"], "invalid --repository"),
    (["--repository", "/srv/a b"], "invalid --repository"),
    (["--keep-daily", "-1"], "invalid --keep-daily"),
    (["--keep-weekly", "many"], "invalid --keep-weekly"),
    (["Shop"], "invalid site name"),
    (["--credentials", "/nonexistent"], "/nonexistent"),
])
def test_backup_refuses_bad_input(root, capsys, argv, message):
    host, runner = make_host(root)
    with pytest.raises(SystemExit) as exc:
        backup_command.main([*argv, "--dry-run"], host)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert runner.calls == []


def test_credentials_must_be_upper_case_keys(root, capsys):
    creds = root / "creds"
    creds.write_text("aws_key=x\n")
    host, _ = make_host(root)
    with pytest.raises(SystemExit):
        backup_command.main(["--credentials", str(creds), "--dry-run"], host)
    assert "upper-case keys (not aws_key)" in capsys.readouterr().err


def test_backup_of_a_site_dumps_then_snapshots_then_applies_retention(root):
    with_registry(root, SHOP)
    (root / "srv/sites/shop/shared/uploads").mkdir(parents=True)
    (root / "srv/sites/shop/shared/.env").write_text(
        "REDIS_URL=redis://default:r3dispass@127.0.0.1:5000/0\n")
    host, runner = make_host(root, [(["getent"], 2, ""), (["systemctl", "is-active"], 0, ""),
                                    (["restic"], 0, "")])
    assert backup_command.main(["shop", "--dry-run"], host) == 0
    plan = planned_commands(host)
    stage = root / "var/lib/siteops/backup/shop"
    in_slice = ("systemd-run --scope --quiet --collect --slice=siteops-shop.slice -- "
                "choom -n 500 -- ")
    assert plan[0].startswith(in_slice + "bash -c 'umask 077 && runuser -u postgres -- pg_dump")
    assert plan[0].endswith(f"pg_dump shop {stage}/database.dump")
    assert plan[1] == ("redis-cli -h 127.0.0.1 -p 5000 --no-auth-warning SAVE")
    assert plan[2].startswith(in_slice + "restic --quiet backup --json --tag site:shop "
                              f"{stage} {root}/srv/sites/shop/shared/uploads "
                              f"{root}/srv/sites/shop/shared/.env")
    assert plan[3:] == ["restic --quiet forget --tag site:shop --group-by tags "
                        "--keep-daily 7 --keep-weekly 4 --keep-monthly 6"]  # prune: full runs
    assert "r3dispass" not in " ".join(c for call in runner.calls for c in call)
    assert "r3dispass" not in host.out.getvalue()


def test_restore_refuses_without_yes_and_changes_nothing(root, capsys):
    with_registry(root, SHOP)
    host, runner = make_host(root)
    assert restore.main(["shop"], host) == 2
    assert "pass --yes" in capsys.readouterr().err and runner.calls == []


@pytest.mark.parametrize("argv, message", [
    ([], "name the site(s) to restore, or pass --all"),
    (["shop", "--all", "--yes"], "name the site(s) to restore, or pass --all"),
    (["shop", "blog", "--snapshot", "4f2a9c1e", "--yes"], "--snapshot needs exactly one NAME"),
])
def test_restore_argument_rules(root, capsys, argv, message):
    host, runner = make_host(root)
    assert restore.main(argv, host) == 2
    assert message in capsys.readouterr().err and runner.calls == []


def test_restore_never_makes_a_repository_or_a_password(root, capsys):
    with_registry(root, SHOP)
    host, runner = make_host(root, dry_run=True)
    assert restore.main(["shop", "--yes", "--dry-run"], host) == 1
    assert "copy the repository's password there" in capsys.readouterr().err


def test_remove_site_refuses_without_yes(root, capsys):
    with_registry(root, SHOP)
    host, runner = make_host(root, dry_run=False)
    assert remove_site.main(["shop"], host) in (1, 2)  # not root here, or refused
    assert runner.calls == [] or "pass --yes" in capsys.readouterr().err


def test_remove_site_plan_goes_from_traffic_to_processes_to_data(root):
    with_registry(root, SHOP)
    (root / "etc/nginx/sites-available").mkdir(parents=True)
    (root / "etc/nginx/sites-available/shop.conf").write_text("server {}\n")
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/shop-frontend@.service").write_text("[Service]\n")
    (root / "srv/sites/shop").mkdir(parents=True)
    host, _ = make_host(root, [(["getent", "passwd"], 0, ACCOUNTS), (["getent", "group"], 0,
                                                                     "shop:x:1001:\n"),
                               (["runuser"], 0, "t|f|f|f|20|SCRAM-SHA-256$x", "", "pg_authid"),
                               (["runuser"], 0, "1"), (["systemctl", "is-active"], 3, ""),
                               (["nft", "list"], 1, "")])
    assert remove_site.main(["shop", "--yes", "--no-backup", "--dry-run"], host) == 0
    plan = planned_commands(host)
    order = [next(i for i, c in enumerate(plan) if c.startswith(prefix)) for prefix in (
        "nginx -t", "systemctl stop siteops-shop.slice",
        "runuser -u postgres -- psql", f"rm -rf --one-file-system -- {root}/srv/sites/shop",
        "userdel shop", "groupdel shop")]
    assert order == sorted(order), plan
    notes = [a.detail for a in host.actions if a.kind == "run" and a.detail]
    assert notes == ['DROP DATABASE "shop" WITH (FORCE);', 'DROP ROLE "shop";',
                     "the rendered ruleset"]
    removed = [a.path for a in host.actions if a.kind == "remove"]
    assert str(root / "etc/nginx/sites-available/shop.conf") in removed
    assert str(root / "etc/systemd/system/shop-frontend@.service") in removed


def test_remove_site_of_an_unknown_name_with_nothing_left_is_refused(root, capsys):
    with_registry(root)
    host, _ = make_host(root, [(["getent"], 2, "")])
    assert remove_site.main(["ghost", "--yes", "--dry-run"], host) == 2
    assert "nothing of it on this host" in capsys.readouterr().err


def test_a_login_user_is_never_deleted_as_a_site(root, capsys):
    with_registry(root)
    (root / "srv/sites/alice").mkdir(parents=True)
    host, _ = make_host(root, [(["getent", "passwd"], 0,
                                "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"),
                               (["systemctl", "is-active"], 3, ""),
                               (["runuser"], 0, ""), (["nft", "list"], 1, "")])
    assert remove_site.main(["alice", "--yes", "--no-backup", "--dry-run"], host) == 1
    assert "not a site's user" in capsys.readouterr().err
