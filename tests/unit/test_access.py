"""Tenant keys: the forced command's allow-list against a corpus of hostile
requests, the role and site each needs, the keys file sshd reads, and the
access command's plan."""

import io
import json
import shlex
import subprocess

import pytest

from fakes import make_host
from siteops import access, model
from siteops.commands import access as access_command
from siteops.commands import tenant
from siteops.model import Key

FP = "SHA256:" + "A" * 43
BLOG = {"blog": Key(FP, "ssh-ed25519 AAAA", "alice", "deploy")}
READER = {"blog": Key(FP, "ssh-ed25519 AAAA", "bob", "read")}

ALLOWED = [
    ("deploy blog", "deploy", "deploy"),
    ("deploy blog --ref v1.2", "deploy", "deploy"),
    ("deploy blog --ref=main --dry-run", "deploy", "deploy"),
    ("rollback blog --to 20261130T101500Z", "rollback", "deploy"),
    ("config blog", "config", "deploy"),
    ("config blog --show", "config", "deploy"),
    ("config blog set STRIPE_KEY", "config", "deploy"),
    ("config blog set 'GREETING=it is $5; ok' --no-restart", "config", "deploy"),
    ("config blog unset A B", "config", "deploy"),
    ("backup blog", "backup", "deploy"),
    ("backup --list blog --json", "backup", "read"),
    ("logs blog", "logs", "read"),
    ("logs blog worker -n 50 -f", "logs", "read"),
    ("logs blog worker -f -n 0", "logs", "read"),
    ("sites show blog --json", "sites show", "read"),
    ("sites usage blog", "sites usage", "read"),
    ("maintenance blog on --message 'Back at 14:00' --retry-after 600", "maintenance",
     "deploy"),
    ("maintenance blog off", "maintenance", "deploy"),
    ("logs blog drain add syslog+tls://logs.example.com:6514 --ca -", "logs drain", "deploy"),
    ("logs blog drain add syslog://10.0.0.5:514 --plain", "logs drain", "deploy"),
    ("logs blog drain remove syslog://10.0.0.5:514", "logs drain", "deploy"),
    ("logs blog drain list --json", "logs drain", "deploy"),
]
SPECIAL = [
    ("git-receive-pack 'blog'", "git-receive-pack", "deploy"),
    ("git-receive-pack '/blog.git'", "git-receive-pack", "deploy"),
    (None, "help", "read"),
    ("", "help", "read"),
    ("help", "help", "read"),
]


@pytest.mark.parametrize("asked, command, role", ALLOWED)
def test_each_allowed_form_is_read_by_the_commands_own_parser(asked, command, role):
    """The argv handed to the command's main is the tenant's words, which its
    own parser (the one root's command line goes through) has just read."""
    request = tenant.parse(asked)
    words = shlex.split(asked)
    assert (request.command, request.site, request.role) == (command, "blog", role)
    assert request.argv == tuple(words[1:])
    parsed = tenant.ALLOWED[command].parser().parse_args(list(request.argv))
    assert (getattr(parsed, "name", None) or parsed.names[0]) == "blog"


@pytest.mark.parametrize("asked, command, role", SPECIAL)
def test_push_and_help_need_no_parser(asked, command, role):
    request = tenant.parse(asked)
    assert (request.command, request.argv, request.role) == (command, (), role)


HOSTILE = [
    # A shell, or any program.
    "bash", "sh -c id", "/bin/sh", "id", "scp -t /tmp", "internal-sftp", "rsync --server . /",
    "git-upload-pack 'blog'", "git-upload-archive blog", "git receive-pack blog",
    # Command injection through the words.
    "deploy blog; id", "deploy blog && id", "deploy blog | id", "deploy $(id)", "deploy `id`",
    "deploy blog$(id)", "deploy 'blog;id'", "deploy blog\nid", "deploy blog\rid",
    "deploy blog\x00", "logs blog\x1b[2J", "deploy blog --ref '$(reboot)'",
    "deploy blog --ref 'main;id'", "deploy blog --ref '`id`'", "deploy blog --ref ..",
    "deploy blog --ref -x", "deploy blog --ref", "deploy 'blog' 'shop'",
    "config blog set 'A=1' '$(id)'", "config blog set ../A", "config blog rm A",
    "config blog set", "config blog set PORT=1", "config blog set DATABASE_URL=x",
    "logs blog ../../etc/shadow", "logs blog -n -1", "logs blog -n 1e9", "logs blog a b",
    "logs blog -n 100001", "logs blog -n 0x10",
    "sites list", "sites doc", "sites show", "sites usage blog shop",
    "deploy", "deploy 'unterminated", "deploy blog \\", "x" * 3000,
    "deploy blog\u202e", "deploy blog\u0085",
    # Options disguised as names, and options a tenant may not use.
    "deploy --repo /etc blog", "deploy blog --repo /root/.ssh", "deploy blog --repo=file:///etc",
    "deploy blog --no-fetch", "deploy blog --start frontend=id", "deploy blog --keep 0",
    "deploy blog --debug", "deploy -h", "deploy --help blog", "deploy --name=shop",
    "config --show", "backup blog --repository /tmp/r", "backup blog --credentials /etc/shadow",
    "backup --all", "rollback blog --dry-run=yes", "logs blog --follow=1", "sites show -",
    "deploy -- blog", "deploy -blog", "maintenance blog maybe", "maintenance blog on off",
    "maintenance blog on --retry-after 0", "maintenance blog on --message",
    "maintenance shop on",
    # Abbreviations argparse would accept, of options a tenant may not use.
    "deploy blog --no-f", "deploy blog --keep-w", "deploy blog --tr", "deploy blog --deb",
    "deploy blog --st frontend=id", "sites usage blog --win 1", "sites show blog --debug",
    "sites usage blog --prometheus-dir /etc", "rollback blog --keep-warm", "backup blog --ver",
    "logs blog --debug", "config blog --trace",
    # Other sites, paths and spellings of a name.
    "deploy ../blog", "deploy blog/", "deploy /blog", "deploy Blog", "deploy BLOG",
    "deploy blog.git", "deploy ./blog", "deploy bl\u00f6g", "deploy blog/../shop",
    "git-receive-pack '../blog'", "git-receive-pack '/srv/sites/blog'",
    "git-receive-pack '~/blog'", "git-receive-pack 'blog/../shop'", "git-receive-pack",
    "git-receive-pack blog shop", "git-receive-pack '/blog/'", "git-receive-pack '-blog'",
    "git-receive-pack '--upload-pack=id'",
    # Drains: a CA only on stdin (a path would have root read a file), and the
    # same flags as root's parser has, nothing more.
    "logs blog drain add syslog+tls://l.example:6514 --ca /etc/shadow",
    "logs blog drain add syslog+tls://l.example:6514 --ca=/root/key.pem",
    "logs blog drain add syslog+tls://l.example:6514 --debug", "logs blog drain rm x",
    "logs blog drain add syslog+tls://l.example:6514 x", "logs blog drain --trace list",
]


@pytest.mark.parametrize("asked", HOSTILE)
def test_hostile_requests_are_refused_in_one_line(asked):
    with pytest.raises(tenant.Refused) as exc:
        tenant.authorize(tenant.parse(asked), BLOG)
    assert "\n" not in str(exc.value) and str(exc.value)


@pytest.mark.parametrize("asked", ["deploy shop", "logs shop", "git-receive-pack 'shop'",
                                   "logs shop drain add syslog://10.0.0.5:514 --plain",
                                   "sites show shop", "config shop --show", "backup shop",
                                   "backup --list shop", "rollback shop"])
def test_another_sites_name_is_refused(asked):
    with pytest.raises(tenant.Refused, match="does not act on site 'shop'"):
        tenant.authorize(tenant.parse(asked), BLOG)


@pytest.mark.parametrize("asked", ["deploy blog", "rollback blog", "config blog",
                                   "config blog set A", "backup blog", "git-receive-pack 'blog'",
                                   "rollback blog --list", "logs blog drain list",
                                   "logs blog drain add syslog://10.0.0.5:514 --plain"])
def test_a_read_key_may_not_change_or_see_configuration(asked):
    with pytest.raises(tenant.Refused, match="read role on blog"):
        tenant.authorize(tenant.parse(asked), READER)


@pytest.mark.parametrize("asked", ["logs blog -f", "sites show blog", "sites usage blog --json",
                                   "backup --list blog", "help"])
def test_a_read_key_reads(asked):
    tenant.authorize(tenant.parse(asked), READER)


def test_a_key_that_acts_on_no_site_is_refused_even_for_help():
    with pytest.raises(tenant.Refused):
        tenant.authorize(tenant.parse("deploy blog"), {})


def real_key(tmp_path, name="k", kind="ed25519", bits=None):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *(["-b", str(bits)] if bits else []),
                    "-N", "", "-C", f"{name}@laptop", "-f", str(path)], check=True)
    fp = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True,
                        capture_output=True, text=True).stdout.split()[1]
    return path, fp


def test_fingerprints_are_openssh_s(tmp_path):
    path, fp = real_key(tmp_path)
    key = access.parse((tmp_path / "k.pub").read_text(), "k.pub")
    assert key.fingerprint == fp and key.comment == "k@laptop" and key.type == "ssh-ed25519"
    # Options before the type are dropped: siteops writes its own.
    assert access.key_lines('from="10.0.0.1",no-pty ' + key.text + " x")[0].fingerprint == fp


@pytest.mark.parametrize("text, why", [
    ("", "found 0"), ("ssh-ed25519 AAAA@@@", "found 0"),
    ("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==", "found 0"),  # an RSA blob called ed25519
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n", "private key"),
])
def test_what_is_not_one_public_key_is_refused(text, why):
    with pytest.raises(Exception, match=why):
        access.parse(text, "f")


def test_two_keys_in_one_file_are_refused(tmp_path):
    real_key(tmp_path, "a")
    real_key(tmp_path, "b")
    text = (tmp_path / "a.pub").read_text() + (tmp_path / "b.pub").read_text()
    with pytest.raises(Exception, match="found 2"):
        access.parse(text, "both")


def site(name, keys=()):
    return model.Site(name=name, slot=0, keys=list(keys))


def test_the_keys_file_restricts_every_key_to_the_tenant_command(root):
    host, _ = make_host(root)
    k1 = Key("SHA256:" + "a" * 43, "ssh-ed25519 AAAAC3", "alice")
    k2 = Key("SHA256:" + "b" * 43, "ssh-rsa AAAAB3", "ci", "read")
    text = access.render(host, [site("shop", [k2]), site("blog", [k1, k2])])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [  # one line per key, even on two sites: the registry says which sites
        f'restrict,command="/usr/bin/sudo -n {root}/opt/siteops/bin/tenant {k1.fingerprint}" '
        "ssh-ed25519 AAAAC3 siteops-tenant",
        f'restrict,command="/usr/bin/sudo -n {root}/opt/siteops/bin/tenant {k2.fingerprint}" '
        "ssh-rsa AAAAB3 siteops-tenant"]


GETENT_DEPLOY = (["getent", "passwd", "deploy"], 0, "deploy:x:1000:1000::/home/deploy:/bin/bash\n")


def registry_with(root, sites):
    (root / "var/lib/siteops").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(
        {"version": 2, "sites": {s.name: model.site_to_json(s) for s in sites}}))
    (root / "etc/ssh/siteops-keys").mkdir(parents=True)


def test_access_add_plans_the_registry_entry_and_the_keys_file(root, tmp_path, monkeypatch):
    registry_with(root, [site("blog")])
    path, fp = real_key(tmp_path, "alice")
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], capture_output=True,
                            text=True).stdout
    host, runner = make_host(root, [GETENT_DEPLOY, (["ssh-keygen"], 0, keygen)])
    monkeypatch.setattr("os.geteuid", lambda: 0)
    code = access_command.main(["blog", "add", f"{path}.pub", "--role", "read", "--dry-run"],
                               host=host)
    assert code == 0, host.out.getvalue()
    written = host.written[str(host.paths.tenant_keys)]
    assert f"tenant {fp}\" ssh-ed25519 " in written and written.startswith(access.HEADER)
    assert f"added {fp} (read) to blog" in host.out.getvalue()


def test_an_operator_key_cannot_become_a_tenant_key(root, tmp_path):
    registry_with(root, [site("blog")])
    path, fp = real_key(tmp_path, "op")
    (root / "home/deploy/.ssh").mkdir(parents=True)
    (root / "home/deploy/.ssh/authorized_keys").write_text((tmp_path / "op.pub").read_text())
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], capture_output=True,
                            text=True).stdout
    host, _ = make_host(root, [GETENT_DEPLOY, (["ssh-keygen"], 0, keygen)])
    code = access_command.main(["blog", "add", f"{path}.pub", "--dry-run"], host=host)
    assert code == 2 and str(host.paths.tenant_keys) not in host.written


def test_a_weak_rsa_key_is_refused(root, tmp_path):
    registry_with(root, [site("blog")])
    path, _ = real_key(tmp_path, "weak", "rsa", 1024)
    keygen = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], capture_output=True,
                            text=True).stdout
    host, _ = make_host(root, [GETENT_DEPLOY, (["ssh-keygen"], 0, keygen)])
    with pytest.raises(Exception, match="1024 bits is too weak"):
        access.check_strength(host, access.parse((tmp_path / "weak.pub").read_text(), "w"))


@pytest.mark.parametrize("updates, said", [
    ("a b refs/heads/main\nc d refs/heads/dev\n", "one branch or tag at a time"),
    (f"{'1' * 40} {'0' * 40} refs/heads/main\n", "cannot be deleted"),
    (f"{'0' * 40} {'1' * 40} refs/notes/x\n", "only branches and tags"),
])
def test_the_pre_receive_hook_refuses_before_deploying(updates, said, monkeypatch, capsys):
    monkeypatch.setenv("SITEOPS_SITE", "blog")
    monkeypatch.setattr("sys.stdin", io.StringIO(updates))
    monkeypatch.setattr("siteops.commands.deploy.main",
                        lambda *a, **k: pytest.fail("deployed"))
    assert tenant.pre_receive() == 1
    assert said in capsys.readouterr().out
