import grp
import io
import os
import pwd
import stat

import pytest

from siteops import envfile, firewall, nginx, postgres, redis
from siteops import host as siteops_host
from siteops.errors import CommandError, SiteopsError
from siteops.model import Site, Tls

from fakes import make_host

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name


def test_atomic_write_sets_mode_first_and_leaves_no_temp(tmp_path):
    target = tmp_path / "secret"
    siteops_host.atomic_write(target, b"s3cret\n", 0o600)
    assert target.read_bytes() == b"s3cret\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret"]


def test_atomic_write_cleans_up_on_failure(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("keep")
    with pytest.raises(OSError):
        siteops_host.atomic_write(tmp_path / "dir", b"data", 0o644)  # cannot replace a directory
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_write_reports_change_only_when_something_differs(root):
    host, _ = make_host(root, dry_run=False)
    path = root / "etc/app.conf"
    assert host.write(path, "a\n", 0o640, ME, MY_GROUP) is True
    assert host.write(path, "a\n", 0o640, ME, MY_GROUP) is False
    assert host.write(path, "a\n", 0o600, ME, MY_GROUP) is True  # mode differs
    assert host.write(path, "b\n", 0o600, ME, MY_GROUP) is True
    assert path.read_text() == "b\n"


def test_failed_validation_puts_every_file_back(root):
    host, runner = make_host(root, [(["check"], 1, "", "line 3: broken")], dry_run=False)
    old, new = root / "etc/old.conf", root / "etc/new.conf"
    old.write_text("old\n")
    os.chmod(old, 0o640)
    with pytest.raises(SiteopsError, match="`check` failed, previous files restored: line 3: broken"):
        with host.validated([old, new], ["check"], "thing"):
            host.write(old, "changed\n", 0o644, ME, MY_GROUP)
            host.write(new, "created\n", 0o644, ME, MY_GROUP)
    assert old.read_text() == "old\n" and stat.S_IMODE(old.stat().st_mode) == 0o640
    assert not new.exists()


def test_validation_is_skipped_when_nothing_changed(root):
    host, runner = make_host(root, dry_run=False)
    with host.validated([root / "etc/x"], ["check"], "thing") as outcome:
        pass
    assert (outcome.changed, outcome.restored, runner.calls) == (False, False, [])


def test_symlink_is_swapped_not_removed(root):
    host, _ = make_host(root, dry_run=False)
    link = root / "current"
    assert host.symlink(link, "releases/1") and host.symlink(link, "releases/2")
    assert os.readlink(link) == "releases/2"
    assert host.symlink(link, "releases/2") is False
    assert sorted(os.listdir(root)) == ["current", "etc"]


def test_failing_command_carries_argv_code_and_redacted_stderr(root):
    host, _ = make_host(root, [(["psql"], 2, "", "FATAL: password hunter2 rejected")], dry_run=False)
    with pytest.raises(CommandError) as err:
        host.run(["psql", "-d", "x"], secrets=["hunter2"])
    assert err.value.code == 2 and err.value.argv == ["psql", "-d", "x"]
    assert "hunter2" not in str(err.value) and siteops_host.REDACTED in str(err.value)


def test_trace_times_each_step_and_command_and_never_shows_a_secret(root):
    host, _ = make_host(root, [(["systemctl"], 0, "", "")], dry_run=False)
    host.trace = io.StringIO()
    with host.step("unit started"):
        host.run(["systemctl", "start", "shop-web@3000"])
        host.query(["systemctl", "is-active", "hunter2"], secrets=["hunter2"])
    lines = host.trace.getvalue().splitlines()
    assert [line.split(None, 2)[2] for line in lines] == [
        "$ systemctl start shop-web@3000", f"$ systemctl is-active {siteops_host.REDACTED}",
        "step unit started"]
    since, took = zip(*((float(a), float(b)) for a, b, _ in (line.split(None, 2) for line in lines)))
    assert list(since) == sorted(since) and all(t <= s for s, t in zip(since, took))
    assert "unit started" in host.out.getvalue()  # the progress itself is unchanged


def test_real_runner_uses_no_shell_and_c_locale():
    res = siteops_host.run_command(["sh", "-c", 'echo "$LC_ALL" "$1"', "sh", "a; rm -rf /"])
    assert res.out == "C a; rm -rf /\n"
    assert siteops_host.run_command(["/nonexistent/x"]).code == 127
    assert siteops_host.run_command(["sleep", "5"], timeout=0.2).code == 124


def test_env_merge_keeps_values_and_operator_lines():
    site = Site("shop", 0, components=["frontend"], ports={"frontend": 3100, "redis": 5000})
    first = envfile.merge(None, site, 5432)
    edited = first.replace("NODE_ENV=production", "NODE_ENV=staging") + "STRIPE_KEY=sk_live_x\n"
    again = envfile.merge(edited, site, 5432)
    assert again == edited
    without_secret = edited.replace("JWT_SECRET=", "OLD_JWT=")
    grown = envfile.merge(without_secret, site, 5432)
    assert grown.startswith(without_secret) and grown[len(without_secret):].startswith("JWT_SECRET=")


def test_env_merge_drops_port_settings_the_units_now_own():
    site = Site("shop", 0, components=["frontend"], ports={"frontend": 3100, "redis": 5000})
    old = envfile.merge(None, site, 5432) + "FRONTEND_PORT=3100\nAPI_PORT=4000\nMY_PORT=1\n"
    new = envfile.merge(old, site, 5432)
    assert "FRONTEND_PORT" not in new and "API_PORT" not in new and "MY_PORT=1\n" in new


def test_scram_verifier_round_trip():
    verifier = postgres.scram_verifier("correct horse")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert postgres.verifier_matches(verifier, "correct horse")
    assert not postgres.verifier_matches(verifier, "wrong horse")
    assert not postgres.verifier_matches("md5abc", "correct horse")
    # Same salt, same result: what lets a re-run leave an existing role alone.
    salt = b"0123456789abcdef"
    assert postgres.scram_verifier("pw", salt) == postgres.scram_verifier("pw", salt)


def test_redis_directives_touch_active_lines_only():
    text = "# bind 192.168.1.1\nbind 0.0.0.0\nprotected-mode no\nport 6379\n"
    out = redis.set_directives(text, redis.SHARED_SETTINGS)
    assert out == "# bind 192.168.1.1\nbind 127.0.0.1 -::1\nprotected-mode yes\nport 6379\n"
    assert redis.set_directives(out, redis.SHARED_SETTINGS) == out
    assert redis.set_directives("port 1\n", {"bind": "x"}) == "port 1\nbind x\n"


def test_ufw_status_is_parsed(root):
    status = ("Status: active\nLogging: on (low)\nDefault: deny (incoming), allow (outgoing), "
              "disabled (routed)\n\nTo  Action  From\n--  ------  ----\n"
              "22/tcp                     ALLOW IN    Anywhere\n"
              "8080/tcp                   ALLOW IN    Anywhere\n"
              "22/tcp (v6)                ALLOW IN    Anywhere (v6)\n")
    host, _ = make_host(root, [(["ufw", "status"], 0, status)])
    assert firewall.status(host) == (True, "deny", {"22/tcp", "8080/tcp"})
    assert firewall.ensure(host) == ["8080/tcp"]
    assert [a.argv for a in host.actions] == [("ufw", "allow", "80/tcp"), ("ufw", "allow", "443/tcp")]


def test_http2_syntax_follows_the_nginx_version():
    assert "listen 443 ssl http2;" in nginx.listen_https((1, 24, 0))
    assert "http2 on;" in nginx.listen_https((1, 25, 1))
    assert "http2" not in nginx.listen_https((1, 26, 0)).split("\n")[0]


def test_cloudflare_list_is_validated():
    date, ranges = nginx.parse_ranges(nginx.CLOUDFLARE_LIST.read_text())
    assert date == "2025-06-01" and "173.245.48.0/20" in ranges and "2400:cb00::/32" in ranges
    with pytest.raises(SiteopsError, match="bad range"):
        nginx.parse_ranges("10.0.0.0/8\nnot-an-ip\n")


def test_a_streamed_command_prints_as_it_goes_and_fails_with_its_last_lines(root):
    out = "".join(f"line {i}\n" for i in range(40))
    host, runner = make_host(root, [(["build"], 2, out)], dry_run=False)
    with pytest.raises(CommandError) as err:
        host.run(["build", "--all"], stream=True)
    assert host.out.getvalue().splitlines()[:2] == ["    line 0", "    line 1"]
    assert err.value.stderr.splitlines() == [f"line {i}" for i in range(15, 40)]


def test_redaction_masks_known_secrets_and_anything_shaped_like_one():
    diff = ("-requirepass hand-set-password\n+requirepass " + "k" * 43 + "\n maxmemory 64mb\n"
            "DATABASE_URL=postgresql://shop:pw-not-in-env@localhost:5432/shop\n"
            "API_TOKEN=abc\nNODE_ENV=production\nsecret in prose: " + "k" * 43 + "\n")
    out = siteops_host.redact(diff, ["k" * 43])
    for secret in ("hand-set-password", "k" * 43, "pw-not-in-env", "abc"):
        assert secret not in out
    assert "maxmemory 64mb" in out and "NODE_ENV=production" in out
    assert "+requirepass ********" in out and "postgresql://shop:********@localhost" in out


def test_secrets_of_an_env_file_include_passwords_inside_urls():
    text = "REDIS_URL=redis://default:" + "p" * 43 + "@127.0.0.1:5000/0\nNODE_ENV=production\n"
    assert "p" * 43 in envfile.secrets_of(text)


def test_control_characters_from_builds_and_apps_are_stripped():
    assert siteops_host.clean("ok\x1b[31m red\r\x07\x9b\tx\n") == "ok[31m red\tx\n"


def test_certbot_issues_one_certificate_per_site_and_names_the_cause_of_a_failure(root):
    from siteops import tls
    host, _ = make_host(root)
    site = Site("shop", 0, domains=["shop.example.com", "www.shop.example.com"],
                tls=Tls(email="ops@example.com", server="https://127.0.0.1:14000/dir"))
    argv = tls.certbot_argv(host, site)
    assert argv[:4] == ["certbot", "certonly", "--webroot", "-w"]
    assert argv[argv.index("--cert-name") + 1] == "shop"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "-d"] == site.domains
    assert "--server" in argv and "-m" in argv and "--staging" not in argv
    for output, cause in [
            ("Type: dns\nDetail: DNS problem: NXDOMAIN looking up A for shop.example.com", "DNS"),
            ("Detail: 1.2.3.4: Invalid response from http://shop.example.com/.well-known/"
             "acme-challenge/x: 404", "HTTP-01"),
            ("too many certificates (5) already issued for this exact set of domains",
             "rate limit")]:
        assert tls.cause(output).startswith(cause)


DEBIAN_12_NGINX = """user www-data;
worker_processes auto;
pid /run/nginx.pid;
events {
\tworker_connections 768;
}
http {
\tssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3; # Dropping SSLv3, ref: POODLE
\tssl_prefer_server_ciphers on;
\tinclude /etc/nginx/conf.d/*.conf;
}
"""


def test_nginx_conf_keeps_everything_but_weak_tls_and_gets_enough_descriptors():
    edited = nginx.main_conf(DEBIAN_12_NGINX)
    assert edited.splitlines()[2].startswith("worker_rlimit_nofile 16384;")
    assert "\t# siteops (conf.d/siteops.conf): ssl_protocols TLSv1 TLSv1.1" in edited
    assert "\t# siteops (conf.d/siteops.conf): ssl_prefer_server_ciphers on;" in edited
    assert [l for l in edited.splitlines() if "siteops" not in l] == \
        [l for l in DEBIAN_12_NGINX.splitlines() if not l.strip().startswith("ssl_")]
    assert nginx.main_conf(edited) == edited  # a second bootstrap changes nothing
    # An earlier siteops's value is raised; an operator's own is left alone.
    older = edited.replace(nginx.RLIMIT_NOFILE, "worker_rlimit_nofile 4096;  # siteops: twice "
                                                "worker_connections, and more\n")
    assert nginx.main_conf(older) == edited
    own = edited.replace(nginx.RLIMIT_NOFILE, "worker_rlimit_nofile 50000;\n")
    assert nginx.main_conf(own) == own


def test_the_fake_runner_refuses_a_command_it_was_not_told_about(root):
    host, runner = make_host(root, [(["systemctl", "is-active"], 3, "")], dry_run=False)
    assert host.query(["systemctl", "is-active", "x"], ok=(3,)).code == 3
    with pytest.raises(AssertionError, match="not told about: \\['systemctl', 'restart'"):
        host.run(["systemctl", "restart", "x"])
