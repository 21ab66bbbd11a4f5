"""Command plans of bootstrap and add-site, asserted exactly, from recorded facts."""

import json

from siteops import envfile
from siteops.commands import add_site, bootstrap
from siteops.packages import PACKAGES

from siteops.host import Action

from fakes import make_host, planned_commands

PSQL = "runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk operator@laptop\n"

NEW_SERVER = [
    (["getent", "passwd"], 2, ""),
    (["getent", "group"], 2, ""),
    (["dpkg-query"], 1, "".join(f"{p} installed\n" for p in PACKAGES if p != "fail2ban")
     + "fail2ban not-installed\n"),
    (["sh", "-c", "command -v pnpm"], 1, ""),
    (["systemd-detect-virt", "--container"], 0, "systemd-nspawn\n"),
    (["nginx", "-v"], 0, "", "nginx version: nginx/1.22.1"),
    (["pg_lsclusters"], 0, "15 main 5432 online postgres /var/lib/postgresql/15/main x\n"),
    (["runuser"], 0, "default", "", "datacl"),
    (["ufw", "status"], 0, "Status: inactive\n"),
    (["nft", "list"], 1, "", "Error: No such file or directory"),
    (["systemctl", "is-enabled", "--quiet", "redis-server"], 0, ""),
    (["systemctl", "is-active", "--quiet", "ssh.service"], 0, ""),
    (["systemctl"], 3, ""),
    (["restic"], 1, "", "Fatal: unable to open config file: stat /var/backups/siteops/config: "
                        "no such file or directory\nIs there a repository at the following "
                        "location?\n/var/backups/siteops"),
]


def bootstrapped(root):
    snippets = root / "etc/nginx/snippets"
    snippets.mkdir(parents=True)
    (snippets / "siteops-realip.conf").write_text("# test\n")


def test_bootstrap_plan_on_a_new_server(root):
    (root / "root/.ssh").mkdir(parents=True)
    (root / "root/.ssh/authorized_keys").write_text(KEY)
    host, runner = make_host(root, NEW_SERVER)
    assert bootstrap.main(["--dry-run"], host) == 0
    assert planned_commands(host) == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends fail2ban",
        "npm install --global pnpm@9",
        "systemctl reload-or-restart nginx",
        "systemctl enable --now nginx",
        "systemctl restart postgresql@15-main.service",
        "systemctl reload postgresql@15-main.service",
        f"{PSQL} postgres",
        f"{PSQL} postgres",
        "systemctl disable --now redis-server",
        "ufw default deny incoming",
        "ufw default allow outgoing",
        "ufw allow 22/tcp",
        "ufw allow 80/tcp",
        "ufw allow 443/tcp",
        "ufw --force enable",
        "systemctl enable --quiet siteops-nftables.service",
        "nft -f /dev/stdin",
        "systemctl enable fail2ban",
        "systemctl reset-failed fail2ban",
        "systemctl restart fail2ban",
        "useradd --user-group --create-home --key HOME_MODE=0750 --shell /bin/bash "
        "--comment 'siteops deploy' deploy",
        "systemctl reload ssh.service",
        "systemctl daemon-reload",  # auditd's drop-in (the fake host is a container)
        "systemctl enable --now siteops-audit.timer",
        "restic --quiet init",
        "systemctl enable --now siteops-backup.timer",
        "systemctl enable --now siteops-verify.timer",
        "systemctl enable --now siteops-usage.timer",
    ]
    notes = [a.detail for a in host.actions if a.kind == "run" and a.detail]
    assert notes == ['REVOKE CONNECT, TEMPORARY ON DATABASE "postgres" FROM PUBLIC;',
                     'REVOKE CONNECT, TEMPORARY ON DATABASE "template1" FROM PUBLIC;',
                     "the rendered ruleset"]
    # Nothing was written, and no command that changes anything was executed.
    assert not (root / "etc/nginx").exists() and not (root / "home").exists()
    assert all(c[0] in ("getent", "dpkg-query", "sh", "nginx", "pg_lsclusters", "runuser",
                        "ufw", "systemctl", "nft", "systemd-detect-virt", "restic")
               for c in runner.calls)
    assert all(c[:2] in (["ufw", "status"], ["systemctl", "is-enabled"], ["systemctl", "is-active"],
                         ["systemctl", "is-failed"], ["systemctl", "list-units"])
               or c[0] not in ("ufw", "systemctl") for c in runner.calls)
    written = host.written
    assert KEY in written[str(root / "home/deploy/.ssh/authorized_keys")]
    assert "/opt/siteops/bin/deploy" in written[str(root / "etc/sudoers.d/siteops-deploy")]
    assert "PasswordAuthentication no" in written[str(root / "etc/ssh/sshd_config.d/00-siteops.conf")]


def test_bootstrap_with_everything_installed_skips_apt(root):
    (root / "root/.ssh").mkdir(parents=True)
    (root / "root/.ssh/authorized_keys").write_text(KEY)
    rules = [(["dpkg-query"], 0, "".join(f"{p} installed\n" for p in PACKAGES)),
             (["sh", "-c", "command -v pnpm"], 0, "/usr/local/bin/pnpm")] + NEW_SERVER
    host, runner = make_host(root, rules)
    assert bootstrap.main(["--dry-run"], host) == 0
    assert not any(c[0] in ("apt-get", "npm") for c in runner.calls)
    assert not any(c.startswith(("apt-get", "npm")) for c in planned_commands(host))


def test_bootstrap_refuses_to_lock_out_the_operator(root, capsys):
    host, runner = make_host(root, NEW_SERVER)
    assert bootstrap.main(["--dry-run"], host) == 1
    assert "refusing to disable SSH passwords" in capsys.readouterr().err
    assert host.actions == []


def test_bootstrap_refuses_an_unsupported_system(root, capsys):
    (root / "etc/os-release").write_text('ID=centos\nVERSION_ID="9"\nPRETTY_NAME="CentOS 9"\n')
    host, runner = make_host(root, NEW_SERVER)
    assert bootstrap.main(["--dry-run"], host) == 1
    assert "unsupported system CentOS 9" in capsys.readouterr().err
    assert host.actions == [] and runner.calls == []


def test_add_site_plan_for_a_new_site(root):
    bootstrapped(root)
    rules = [(["ss"], 0, "LISTEN 0 511 127.0.0.1:3105 0.0.0.0:*\n"),  # slot 0 is in use
             (["runuser"], 0, "")] + NEW_SERVER
    host, runner = make_host(root, rules)
    assert add_site.main(["shop", "--domain", "shop.example.com", "--dry-run"], host) == 0
    assert planned_commands(host) == [
        "useradd --user-group --no-create-home --home-dir "
        f"{root}/srv/sites/shop --shell /usr/sbin/nologin --comment 'siteops site shop' shop",
        "nft -f /dev/stdin",
        f"{PSQL} postgres",  # role, database and both REVOKEs in one session
        # No daemon-reload: the manager has none of the new site's units loaded.
        "systemctl --no-reload enable --now shop-redis.service",
        "systemctl reload-or-restart nginx",
    ]
    assert ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", "--",
            "siteops-shop.slice", "shop-frontend@*.service", "shop-api@*.service",
            "shop-worker@*.service", "shop-redis.service"] in runner.calls
    out = host.out.getvalue()
    assert "site shop: slot 1, ports frontend 3110, api 4010, redis 5010" in out
    env = host.written[f"{root}/srv/sites/shop/shared/.env"]
    values = envfile.parse(env)
    assert "FRONTEND_PORT" not in values and "PORT" not in values  # the units set ports
    assert values["DATABASE_URL"].endswith("@localhost:5432/shop")
    assert Action("write", "0600 shop:shop", f"{root}/srv/sites/shop/shared/.env") in host.actions
    # No secret in the output, in any argv, or in the recorded SQL notes.
    db_password, redis_password = envfile.passwords(env)
    shown = out + json.dumps(runner.calls) + json.dumps([repr(a) for a in host.actions])
    for secret in (db_password, redis_password, values["SESSION_SECRET"], values["JWT_SECRET"]):
        assert len(secret) >= 40 and secret not in shown
    assert "PASSWORD '********'" in out
    sql = next(a.detail for a in host.actions if a.kind == "run" and "psql" in a.argv)
    assert [line.split(" ON ")[0] if "REVOKE" in line else line.split(" ")[0]
            for line in sql.splitlines()] == ["CREATE", "CREATE", "REVOKE ALL", '\\connect',
                                              "REVOKE ALL"]
    assert not (root / "srv").exists()
    assert out.strip().endswith("nothing was changed")


def test_add_site_reloads_the_manager_when_it_has_a_unit_of_the_site_loaded(root):
    """A site once removed, whose units the manager still holds (even as
    not-found), or a converging one: its new files need a daemon-reload."""
    bootstrapped(root)
    rules = [(["systemctl", "list-units"], 0,
              "shop-redis.service not-found inactive dead shop-redis.service\n"),
             (["ss"], 0, ""), (["runuser"], 0, "")] + NEW_SERVER
    host, runner = make_host(root, rules)
    assert add_site.main(["shop", "--domain", "shop.example.com", "--dry-run"], host) == 0
    assert "systemctl daemon-reload" in planned_commands(host)


def test_add_site_refuses_bad_input_before_any_fact_is_read(root, capsys):
    bootstrapped(root)
    for argv in (["Shop", "--domain", "a.example"], ["shop", "--domain", "nodot"],
                 ["shop", "--domain", "a.example", "--components", "db"],
                 ["shop", "--domain", "a.example", "--start", "db=x"], ["shop"]):
        host, runner = make_host(root, NEW_SERVER)
        try:
            code = add_site.main(argv + ["--dry-run"], host)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        assert code == 2, argv
        assert runner.calls == [] and host.actions == []
    assert "invalid site name 'Shop'" in capsys.readouterr().err


def test_add_site_refuses_an_existing_unix_user(root, capsys):
    bootstrapped(root)
    rules = [(["getent", "passwd", "shop"], 0, "shop:x:1005:1005:Shop Owner:/home/shop:/bin/bash\n")]
    host, runner = make_host(root, rules + NEW_SERVER)
    assert add_site.main(["shop", "--domain", "a.example", "--dry-run"], host) == 2
    assert "a Unix user 'shop' already exists" in capsys.readouterr().err
    assert host.actions == []


def test_add_site_needs_bootstrap_first(root, capsys):
    host, runner = make_host(root, NEW_SERVER)
    assert add_site.main(["shop", "--domain", "a.example", "--dry-run"], host) == 1
    assert "run `sudo ./bin/bootstrap` first" in capsys.readouterr().err


def test_add_site_refuses_a_domain_of_another_site(root, capsys):
    bootstrapped(root)
    state = root / "var/lib/siteops"
    state.mkdir(parents=True)
    (state / "registry.json").write_text(json.dumps({"version": 1, "sites": {"blog": {
        "name": "blog", "slot": 0, "domains": ["blog.example"], "components": ["frontend"]}}}))
    host, runner = make_host(root, NEW_SERVER)
    assert add_site.main(["shop", "--domain", "BLOG.example.", "--dry-run"], host) == 2
    assert "domain blog.example already belongs to site blog" in capsys.readouterr().err


def test_root_is_required_without_dry_run(root, capsys, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    host, runner = make_host(root, NEW_SERVER, dry_run=False)
    assert add_site.main(["shop", "--domain", "a.example"], host) == 1
    assert "must be run as root" in capsys.readouterr().err
    assert runner.calls == []


def test_bootstrap_checks_a_cloudflare_list_before_any_change(root, tmp_path, capsys):
    (root / "root/.ssh").mkdir(parents=True)
    (root / "root/.ssh/authorized_keys").write_text(KEY)
    bad = tmp_path / "bad.txt"
    bad.write_text("173.245.48.0/20\nnot-a-range\n")
    host, runner = make_host(root, NEW_SERVER)
    assert bootstrap.main(["--dry-run", "--cloudflare-ips", str(bad)], host) == 1
    assert "bad range in Cloudflare list: 'not-a-range'" in capsys.readouterr().err
    assert host.actions == []
    good = tmp_path / "good.txt"
    good.write_text("# as of 2026-11-01\n173.245.48.0/20\n2400:cb00::/32\n")
    host, runner = make_host(root, NEW_SERVER)
    assert bootstrap.main(["--dry-run", "--cloudflare-ips", str(good)], host) == 0
    assert host.written[str(root / "etc/siteops/cloudflare-ips.txt")] == good.read_text()
