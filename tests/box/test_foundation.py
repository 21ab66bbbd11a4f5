"""bootstrap and add-site on real booted Debian 12 and 13 machines, checked with the
real tools: systemctl, nginx -t, curl, runuser, psql, redis-cli, ufw,
systemd-analyze."""

import json
import re

import pytest

from machine import NODE_APP, PYTHON_APP, commit

# Units whose `systemd-analyze security` exposure must stay at or below this.
MAX_EXPOSURE = 1.5

MANAGED_FILES = ("/etc/nginx /etc/systemd/system /etc/siteops /etc/logrotate.d /etc/ssh "
                 "/etc/sudoers.d /etc/fail2ban/jail.d /etc/postgresql /etc/redis "
                 "/etc/letsencrypt /etc/apt/apt.conf.d /var/lib/siteops /srv/sites /opt/siteops "
                 "/etc/sysctl.d /etc/modprobe.d /etc/security/limits.d /etc/audit/rules.d "
                 "/etc/issue /etc/issue.net /etc/login.defs /etc/default/sysstat "
                 "/etc/default/ufw")


def snapshot(box) -> str:
    """Checksums, modes and owners of every file siteops manages."""
    return box.sh(f"find {MANAGED_FILES} -path '*/logs/*' -prune -o -path '*/redis/*' -prune "
                  "-o -path '*/current' -prune -o -name registry.lock -prune -o -printf '%p %m %u %g %l\\n' | sort; "
                  f"find {MANAGED_FILES} -type f -not -name registry.lock -not -path '*/logs/*' -not -path '*/shared/redis/*' "
                  "-exec md5sum {} + | sort").stdout


@pytest.fixture(scope="module")
def host(box):
    """A bootstrapped box with three sites: alpha (Node.js), beta (Python,
    frontend and API), both deployed from git, and gamma (never deployed)."""
    outputs = {"bootstrap": box.siteops("bootstrap").stdout}
    outputs["alpha"] = box.siteops(
        "add-site alpha --domain alpha.test --components frontend "
        "--start frontend='/usr/bin/env SITE=alpha node server.js'").stdout
    outputs["beta"] = box.siteops(
        "add-site beta --domain beta.test --domain www.beta.test "
        "--start frontend='/usr/bin/env SITE=beta-frontend python3 app.py' "
        "--start api='/usr/bin/env SITE=beta-api python3 app.py'").stdout
    outputs["gamma"] = box.siteops("add-site gamma --domain gamma.test").stdout
    # The start commands are add-site's: the repositories have no siteops.toml.
    commit(box, "/srv/repos/alpha", {"server.js": NODE_APP}, "alpha")
    commit(box, "/srv/repos/beta", {"app.py": PYTHON_APP}, "beta")
    for site in ("alpha", "beta"):
        outputs[f"deploy {site}"] = box.siteops(f"deploy {site} --repo /srv/repos/{site}").stdout
    box.outputs = outputs
    return box


def env_of(box, site: str) -> dict:
    text = box.sh(f"cat /srv/sites/{site}/shared/.env").stdout
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def curl(box, host_header: str, path: str = "/") -> str:
    return box.sh(f"curl -sS -H 'Host: {host_header}' http://127.0.0.1{path}").stdout


def many_requests(box, host_header: str, path: str, n: int) -> list[str]:
    """Status codes of n requests sent by one curl over a keepalive connection."""
    urls = " ".join([f"-o /dev/null http://127.0.0.1{path}"] * n)
    return box.sh(f"curl -s -H 'Host: {host_header}' -w '%{{http_code}}\\n' {urls}").stdout.split()


def test_bootstrap_and_add_site_report_their_changes(host):
    assert "changed      firewall" in host.outputs["bootstrap"]
    assert "site alpha: slot 0, ports frontend 3100, redis 5000" in host.outputs["alpha"]
    assert "site beta: slot 1, ports frontend 3110, api 4010, redis 5010" in host.outputs["beta"]


def test_every_unit_is_active(host):
    pg = host.sh("pg_lsclusters -h").stdout.split()[0]  # 15 on Debian 12, 17 on Debian 13
    units = (f"nginx postgresql@{pg}-main fail2ban ssh alpha-frontend@3100 alpha-redis "
             "beta-frontend@3110 beta-api@4010 beta-redis gamma-redis")
    out = host.sh(f"systemctl is-active {units}", check=False).stdout.split()
    assert out == ["active"] * len(units.split()), out
    assert host.sh("systemctl is-enabled alpha-frontend@3100 beta-api@4010").stdout.split() == ["enabled"] * 2
    # gamma has no release: its component templates exist, no instance runs.
    assert host.sh("systemctl is-active gamma-frontend@3120", check=False).stdout.strip() == "inactive"
    assert host.sh("ls /etc/systemd/system/gamma-frontend@.service")


def test_nginx_config_is_valid(host):
    res = host.sh("nginx -t")
    assert "test is successful" in res.stderr


def test_each_host_name_gets_its_own_site(host):
    assert curl(host, "alpha.test") == "alpha node 3100 /\n"
    assert curl(host, "beta.test") == "beta-frontend python 3110 /\n"
    assert curl(host, "www.beta.test", "/api/items") == "beta-api python 4010 /api/items\n"
    assert "<h1>gamma</h1>" in curl(host, "gamma.test")
    assert "no release has been deployed yet" in curl(host, "gamma.test")


def test_unknown_host_is_refused(host):
    res = host.sh("curl -sS -H 'Host: evil.test' http://127.0.0.1/", check=False)
    assert res.returncode == 52  # 444: connection closed without a response


def test_server_header_hides_version(host):
    headers = host.sh("curl -sS -D - -o /dev/null -H 'Host: alpha.test' http://127.0.0.1/").stdout
    assert re.search(r"^Server: nginx\r?$", headers, re.M)


def test_apps_listen_on_loopback_only(host):
    listeners = host.sh("ss -H -t -l -n").stdout
    for port in (3100, 3110, 4010, 5000, 5010, 5020, 5432):
        addrs = re.findall(rf"(\S+):{port}\s", listeners)
        assert addrs and all(a in ("127.0.0.1", "[::1]") for a in addrs), (port, addrs)


def test_site_cannot_read_another_sites_env(host):
    res = host.sh("runuser -u alpha -- cat /srv/sites/beta/shared/.env", check=False)
    assert res.returncode != 0 and "Permission denied" in res.stderr
    stat = host.sh("stat -c '%a %U %G' /srv/sites/alpha/shared/.env /srv/sites/alpha "
                   "/srv/sites/alpha/shared/logs").stdout.split("\n")
    assert stat[:3] == ["600 alpha alpha", "750 root alpha", "750 root alpha"]


def test_database_roles_reach_only_their_own_database(host):
    alpha = env_of(host, "alpha")["DATABASE_URL"]
    own = host.sh(f"psql '{alpha}' -XAtc 'select current_user, current_database()'")
    assert own.stdout.strip() == "alpha|alpha"
    other = host.sh(f"psql '{alpha.rsplit('/', 1)[0]}/beta' -Xc 'select 1'", check=False)
    assert other.returncode != 0 and "no pg_hba.conf entry" in other.stderr
    shared = host.sh(f"psql '{alpha.rsplit('/', 1)[0]}/postgres' -Xc 'select 1'", check=False)
    assert shared.returncode != 0
    # The password in .env is what the server checks.
    wrong = host.sh(f"psql '{alpha.replace('@', 'x@', 1)}' -Xc 'select 1'", check=False)
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_public_has_no_access_to_site_databases(host):
    acl = host.sh("runuser -u postgres -- psql -XAtc "
                  "\"select datname, datacl from pg_database where datname in "
                  "('alpha','beta','postgres','template1') order by 1\"").stdout
    for line in acl.splitlines():
        name, entries = line.split("|")
        assert not any(e.startswith("=") for e in entries.strip("{}").split(",")), line


def test_redis_is_per_site_and_password_protected(host):
    alpha, beta = env_of(host, "alpha")["REDIS_URL"], env_of(host, "beta")["REDIS_URL"]
    assert host.sh(f"redis-cli -u '{alpha}' ping").stdout.strip() == "PONG"
    host.sh(f"redis-cli -u '{alpha}' set k alpha-value")
    assert host.sh(f"redis-cli -u '{beta}' get k").stdout.strip() == ""
    crossed = alpha.rsplit(":", 1)[0] + ":" + beta.rsplit(":", 1)[1]  # alpha's password, beta's port
    out = host.sh(f"redis-cli -u '{crossed}' get k 2>&1", check=False).stdout
    assert "WRONGPASS" in out or "NOAUTH" in out or "AUTH failed" in out, out
    assert host.sh("systemctl is-active redis-server", check=False).stdout.strip() != "active"


def test_units_are_hardened(host):
    units = ("alpha-frontend@3100 beta-frontend@3110 beta-api@4010 gamma-frontend@3120 "
             "gamma-api@4020 alpha-redis beta-redis gamma-redis").split()
    for unit in units:
        out = host.sh(f"systemd-analyze security {unit}").stdout
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))
        assert score <= MAX_EXPOSURE, (unit, score)


def test_firewall_allows_only_ssh_http_https(host):
    out = host.sh("ufw status verbose").stdout
    assert "Status: active" in out and "Default: deny (incoming)" in out
    allowed = {line.split()[0] for line in out.splitlines() if "ALLOW IN" in line}
    assert allowed == {"22/tcp", "80/tcp", "443/tcp"}


def test_fail2ban_runs_both_jails(host):
    out = host.sh("fail2ban-client status").stdout
    assert "nginx-limit-req" in out and "sshd" in out
    files = host.sh("fail2ban-client get nginx-limit-req logpath").stdout
    assert "/srv/sites/alpha/shared/logs/nginx-error.log" in files


def test_ssh_is_key_only(host):
    out = host.sh("sshd -T").stdout
    assert "passwordauthentication no" in out
    assert "kbdinteractiveauthentication no" in out
    assert "permitrootlogin without-password" in out
    for setting in ("allowtcpforwarding local", "tcpkeepalive no", "compression no",
                    "allowagentforwarding no", "x11forwarding no"):
        assert setting in out.splitlines(), setting


def test_ssh_forwards_local_ports_only(host):
    ssh = ("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o ExitOnForwardFailure=yes -i /root/.ssh/id_ed25519")
    # ssh -L (an operator reaching PostgreSQL through the tunnel) works ...
    out = host.sh(f"{ssh} -f -L 15432:127.0.0.1:5432 root@127.0.0.1 sleep 5 && "
                  "pg_isready -h 127.0.0.1 -p 15432").stdout
    assert "accepting connections" in out
    # ... a remote forward (a listener opened on this host) is refused.
    res = host.sh(f"{ssh} -R 127.0.0.1:15999:127.0.0.1:22 root@127.0.0.1 true", check=False)
    assert res.returncode != 0 and "forwarding" in res.stderr.lower(), res.stderr


def test_ssh_audit_finds_no_failure_and_keys_still_log_in(host):
    # Logins first: ssh-audit's probing makes OpenSSH 9.8+ penalise the source
    # (PerSourcePenalties) for a while.
    ssh = ("ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-i /root/.ssh/id_ed25519")
    assert host.sh(f"{ssh} root@127.0.0.1 echo root-in").stdout.strip() == "root-in"
    # bootstrap gave deploy root's keys (it had none of its own).
    assert host.sh(f"{ssh} deploy@127.0.0.1 id -un").stdout.strip() == "deploy"
    out = host.sh("ssh-audit -n 127.0.0.1", check=False).stdout
    fails = [l for l in out.splitlines() if "[fail]" in l]
    warns = [l for l in out.splitlines() if "[warn]" in l]
    print(f"\nssh-audit: {len(fails)} fail, {len(warns)} warn")
    assert fails == [] and "ssh-ed25519" in out, fails or out


def audit_finding(box, id_: str) -> dict:
    doc = json.loads(box.siteops("audit --json", check=False).stdout)
    return next(f for f in doc["findings"] if f["id"] == id_)


def test_hardening_baseline_is_in_place_and_audited(host):
    assert "install dccp /bin/false" in host.sh("cat /etc/modprobe.d/siteops.conf").stdout
    assert "* hard core 0" in " ".join(host.sh("cat /etc/security/limits.d/90-siteops.conf")
                                       .stdout.split())
    assert re.search(r"^UMASK\s+027$", host.sh("cat /etc/login.defs").stdout, re.M)
    assert 'ENABLED="true"' in host.sh("cat /etc/default/sysstat").stdout
    # UFW re-applies sysctls when it starts: ours, not its own (log_martians=0).
    assert "\nIPT_SYSCTL=/etc/sysctl.d/90-siteops.conf\n" in host.sh("cat /etc/default/ufw").stdout
    assert host.sh("cat /etc/issue").stdout.startswith("Authorized access only.")
    rules = host.sh("cat /etc/audit/rules.d/siteops.rules").stdout
    assert "-w /home/deploy/.ssh/ -p wa -k ssh-keys" in rules
    assert host.sh("augenrules --check", check=False).returncode == 0  # the rules parse
    # auditd cannot run in a container: not started there (its condition), and
    # bootstrap cleared its failure at the box's first boot.
    assert "ConditionVirtualization=!container" in host.sh("systemctl cat auditd").stdout
    assert "auditd" not in host.sh("systemctl --failed --plain --no-legend").stdout
    # deploy's home, and a new login user's, are not world-readable (login.defs UMASK 027).
    assert host.sh("stat -c %a /home/deploy").stdout.strip() == "750"
    host.sh("useradd --create-home umasktest")
    try:
        mode = host.sh("stat -c %a /home/umasktest").stdout.strip()
        assert int(mode, 8) & 0o007 == 0, mode  # 750 (Debian 13's HOME_MODE: 700)
    finally:
        host.sh("userdel --remove umasktest")
    assert audit_finding(host, "host.hardening")["severity"] == "ok"
    host.sh("echo 'Debian GNU/Linux' > /etc/issue && sed -i 's/^UMASK.*/UMASK 022/' /etc/login.defs")
    try:
        finding = audit_finding(host, "host.hardening")
        assert finding["severity"] == "warning" and "/etc/issue differs" in finding["message"] \
            and "/etc/login.defs differs" in finding["message"], finding
    finally:
        host.siteops("bootstrap")
    assert audit_finding(host, "host.hardening")["severity"] == "ok"


def test_deploy_user_has_limited_sudo(host):
    out = host.sh("sudo -l -U deploy").stdout
    assert "/opt/siteops/bin/deploy" in out and "(ALL : ALL) NOPASSWD: ALL" not in out
    assert host.sh("stat -c '%U %a' /opt/siteops/bin/add-site").stdout.strip() == "root 755"


def test_rate_limit_answers_429_and_spares_acme(host):
    # One curl for 200 requests on a keepalive connection: far over 30 r/s + 50.
    for site in ("gamma.test", "alpha.test"):  # placeholder page, proxied app
        codes = many_requests(host, site, "/", 200)
        assert "200" in codes and "429" in codes, site
    host.sh("mkdir -p /var/www/siteops-acme/.well-known/acme-challenge && "
            "echo token > /var/www/siteops-acme/.well-known/acme-challenge/t")
    acme = many_requests(host, "gamma.test", "/.well-known/acme-challenge/t", 200)
    assert set(acme) == {"200"}


def test_logrotate_keeps_nginx_logging_without_losing_lines(host):
    logs = "/srv/sites/alpha/shared/logs"
    host.sh(f"logrotate -f /etc/logrotate.d/siteops-alpha && test -e {logs}/nginx-access.log.1")
    # nginx reloads in the background: requests made meanwhile go to either file.
    for i in range(30):
        curl(host, "alpha.test", f"/after-rotation-{i}")
        host.sh("sleep 0.1")
    new = host.sh(f"cat {logs}/nginx-access.log").stdout
    both = new + host.sh(f"cat {logs}/nginx-access.log.1").stdout
    assert all(f"/after-rotation-{i} " in both for i in range(30))
    assert "/after-rotation-29 " in new


def test_tls_server_appears_with_a_certificate(host):
    live = "/etc/letsencrypt/live/alpha.test"
    host.sh(f"mkdir -p {live} && openssl req -x509 -newkey rsa:2048 -nodes -days 30 "
            f"-subj /CN=alpha.test -keyout {live}/privkey.pem -out {live}/fullchain.pem 2>/dev/null")
    out = host.siteops("add-site alpha --domain alpha.test").stdout
    assert "changed      nginx site alpha" in out
    https = host.sh("curl -sS -k --resolve alpha.test:443:127.0.0.1 https://alpha.test/tls -D -").stdout
    assert "alpha node 3100 /tls" in https
    assert "strict-transport-security" not in https.lower()  # HSTS is opt-in (tls --hsts)
    redirect = host.sh("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "
                       "-H 'Host: alpha.test' http://127.0.0.1/x").stdout
    assert redirect == "301 https://alpha.test/x"
    assert many_requests(host, "alpha.test", "/.well-known/acme-challenge/t", 1) == ["200"]
    unknown = host.sh("curl -sS -k --resolve evil.test:443:127.0.0.1 https://evil.test/", check=False)
    assert unknown.returncode == 35  # handshake rejected for names no site claims


def test_registry_records_sites(host):
    assert host.sh("stat -c '%a %U' /var/lib/siteops/registry.json").stdout.strip() == "600 root"
    data = json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)
    assert data["version"] == 2
    alpha, beta = data["sites"]["alpha"], data["sites"]["beta"]
    assert (alpha["slot"], alpha["state"], alpha["ports"]) == (0, "ready", {"frontend": 3100, "redis": 5000})
    assert beta["domains"] == ["beta.test", "www.beta.test"]
    assert beta["uid"] == int(host.sh("id -u beta").stdout)
    assert host.sh("getent passwd alpha").stdout.strip().endswith(":/srv/sites/alpha:/usr/sbin/nologin")


def test_second_runs_change_nothing(host):
    before = snapshot(host)
    started = host.sh("systemctl show -p ActiveEnterTimestamp nginx alpha-frontend@3100 beta-api@4010").stdout
    again = [host.siteops("bootstrap").stdout,
             host.siteops("add-site alpha --domain alpha.test").stdout,
             host.siteops("add-site beta --domain beta.test --domain www.beta.test").stdout,
             host.siteops("add-site gamma --domain gamma.test").stdout]
    for out in again:
        assert out.strip().splitlines()[-1].startswith("nothing changed"), out
    assert snapshot(host) == before
    assert host.sh("systemctl show -p ActiveEnterTimestamp nginx alpha-frontend@3100 beta-api@4010").stdout == started


def test_dry_run_changes_nothing(host):
    before = snapshot(host)
    out = host.siteops("add-site zeta --domain zeta.test --dry-run").stdout
    assert "would change" in out and "+ useradd" in out
    assert snapshot(host) == before
    assert host.sh("getent passwd zeta", check=False).returncode == 2


def test_bad_input_is_refused_before_any_change(host):
    before = snapshot(host)
    for args, message in [("Bad --domain x.test", "invalid site name"),
                          ("postgres --domain x.test", "reserved"),
                          ("delta --domain 'bad domain'", "invalid domain"),
                          ("delta --domain alpha.test", "already belongs to site alpha"),
                          ("delta --domain d.test --components web", "invalid components")]:
        res = host.siteops(f"add-site {args}", check=False)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)
        errors = [l for l in res.stderr.splitlines() if "error" in l]
        assert len(errors) == 1 and errors[0].startswith("add-site: error: "), res.stderr
    assert snapshot(host) == before


def test_broken_nginx_is_restored_and_rerun_completes(host):
    # Something outside siteops breaks nginx: add-site must not reload into it.
    host.sh("echo 'this is not nginx syntax' > /etc/nginx/sites-enabled/zz-broken.conf")
    try:
        res = host.siteops("add-site delta --domain delta.test", check=False)
        assert res.returncode == 1 and "nginx -t" in res.stderr
        assert host.sh("test -e /etc/nginx/sites-available/delta.conf", check=False).returncode == 1
        assert curl(host, "beta.test") == "beta-frontend python 3110 /\n"  # still served
        data = json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)
        assert data["sites"]["delta"]["state"] == "provisioning"
    finally:
        host.sh("rm -f /etc/nginx/sites-enabled/zz-broken.conf")
    host.siteops("add-site delta --domain delta.test")
    data = json.loads(host.sh("cat /var/lib/siteops/registry.json").stdout)
    assert data["sites"]["delta"]["state"] == "ready"
    assert "<h1>delta</h1>" in curl(host, "delta.test")


def test_corrupt_registry_stops_add_site(host):
    host.sh("cp /var/lib/siteops/registry.json /tmp/registry.good && "
            "echo '{not json' > /var/lib/siteops/registry.json")
    try:
        res = host.siteops("add-site epsilon --domain epsilon.test", check=False)
        assert res.returncode == 1 and "corrupt" in res.stderr
        assert host.sh("cat /var/lib/siteops/registry.json").stdout == "{not json\n"
        assert host.sh("getent passwd epsilon", check=False).returncode == 2
    finally:
        host.sh("cp /tmp/registry.good /var/lib/siteops/registry.json")
