"""What a site consists of is declared once (parts.py): audit's expected
files, backup's snapshot and remove-site all follow it, for a site with two
components, workers, jobs and a certificate."""

import json

from siteops import backup, facts, model, parts
from siteops import units
from siteops.ops import sites as sites_op

from fakes import make_host

RID = "20261130T090000Z"
ENV = ("DATABASE_URL=postgresql://shop:dbpass@localhost:5432/shop\n"
       "REDIS_URL=redis://default:r3dis@127.0.0.1:5000/0\n")


def full_site() -> model.Site:
    return model.Site(
        name="shop", slot=0, state="ready", domains=["shop.test"], components=["frontend", "api"],
        commands={"frontend": "python3 web.py", "api": "python3 api.py"},
        ports=units.ports_for(0, ["frontend", "api"]), live=model.Live(RID, 1),
        releases={RID: model.Release(
            result="ok", commands={"frontend": "python3 web.py", "api": "python3 api.py"},
            health={"frontend": "/", "api": "/"},
            workers={"mail": model.Worker("python3 mail.py", 2)},
            jobs={"cleanup": model.Job("daily", "python3 clean.py")})})


def test_audit_expects_exactly_the_generated_files_the_declaration_names(root):
    host, _ = make_host(root)
    site = full_site()
    (root / f"srv/sites/shop/releases/{RID}").mkdir(parents=True)
    expected = set(facts.expected_files(host, site, (1, 22, 1), ENV))
    declared = {str(p) for p in parts.files(host, site, "generated")}
    # Every file audit renders is declared; the one declared and not rendered
    # is nginx's enabled link (audit checks the file it points at).
    assert expected <= declared
    assert declared - expected == {str(host.paths.nginx_enabled("shop"))}
    assert any("mail-2-1.service.d" in p for p in expected)  # a worker's drop-in
    assert str(host.paths.unit("shop-job-cleanup.timer")) in expected


def test_a_backup_holds_every_declared_file_of_the_site(root):
    host, _ = make_host(root)
    site = full_site()
    every = parts.files(host, site, "data", "generated", "root-only")
    for path in every:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    assert set(backup.site_files(host, site)) == {host.paths.staging("shop"), *every}


def test_remove_site_takes_every_declared_part_away(root):
    host, _ = make_host(root, [(["getent", "passwd"], 0, "shop:x:1001:1001:siteops site shop:"
                                                         "/srv/sites/shop:/usr/sbin/nologin\n"),
                               (["getent", "group"], 0, "shop:x:1001:\n"),
                               (["runuser"], 0, ""), (["systemctl", "is-active"], 3, ""),
                               (["nft", "list"], 1, "")])
    site = full_site()
    every = parts.files(host, site, *[p.name for p in parts.PARTS if p.files])
    for path in every:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path == host.paths.site("shop"):
            path.mkdir(exist_ok=True)
        elif not path.exists():
            path.write_text("x\n")
    sites_op.remove(host, site, keep_data=False)
    gone = [a.path for a in host.actions if a.kind == "remove"] + [
        a.argv[-1] for a in host.actions if a.kind == "run" and a.argv[:2] == ("rm", "-rf")]
    left = [str(p) for p in every if not any(str(p) == g or str(p).startswith(g + "/")
                                             for g in gone)]
    assert left == [], left


# How remove-site's plan shows each part that is not files going away, by the
# actions it records; a part declared without an entry here fails the test.
REMOVED = {
    "user": lambda a: a.kind == "run" and a.argv == ("userdel", "shop"),
    "database": lambda a: a.kind == "run" and a.detail == 'DROP DATABASE "shop" WITH (FORCE);',
    "redis": lambda a: a.kind == "run" and a.argv == ("systemctl", "stop", "siteops-shop.slice"),
    "firewall": lambda a: a.kind == "run" and a.argv[:2] == ("nft", "-f"),
}


def test_remove_site_removes_every_part_that_is_not_files(root):
    assert set(REMOVED) == {p.name for p in parts.PARTS if p.files is None}
    site = full_site().copy(uid=1001)
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(
        {"version": 2, "sites": {"shop": model.to_json(site)}}))
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/siteops-shop.slice").write_text("[Slice]\n")
    host, _ = make_host(root, [(["getent", "passwd"], 0, "shop:x:1001:1001:siteops site shop:"
                                                         "/srv/sites/shop:/usr/sbin/nologin\n"),
                               (["getent", "group"], 0, "shop:x:1001:\n"),
                               (["runuser"], 0, "t|f|f|f|20|SCRAM-SHA-256$x", "", "pg_authid"),
                               (["runuser"], 0, "1"), (["systemctl", "is-active"], 0, ""),
                               (["fail2ban-client", "ping"], 0, "Server replied: pong"),
                               (["nft", "list"], 1, "")])
    sites_op.remove_site(host, "shop", final_backup=False)
    missing = [name for name, seen in REMOVED.items() if not any(map(seen, host.actions))]
    assert missing == [], [(a.kind, a.argv, a.detail) for a in host.actions]
