import pytest

from siteops import validate
from siteops.errors import UsageError

BAD_NAMES = ["", "a", "Shop", "1shop", "shop-2", "shop.x", "x" * 33, "root", "postgres",
             "deploy", "www-data", "pg_shop", "template1", "shop name", "shop;rm",
             "docker", "shadow", "sudo", "adm", "wheel", "lxd", "disk", "kvm", "libvirt"]
GOOD_NAMES = ["shop", "s2", "my_site", "x" * 32]
BAD_DOMAINS = ["x", "localhost", "-a.example.com", "a-.example.com", "a..example.com",
               "exa mple.com", "*.example.com", "1.2.3.4", "a" * 64 + ".com",
               "example.com/path", "ex_ample.com", "http://example.com"]
GOOD_DOMAINS = [("Shop.Example.COM", "shop.example.com"), ("example.com.", "example.com"),
                ("xn--bcher-kva.example", "xn--bcher-kva.example")]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_site_names_are_refused(name):
    with pytest.raises(UsageError) as err:
        validate.site_name(name)
    assert err.value.exit_code == 2 and "site name" in str(err.value)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_site_names_pass(name):
    assert validate.site_name(name) == name


@pytest.mark.parametrize("value", BAD_DOMAINS)
def test_bad_domains_are_refused(value):
    with pytest.raises(UsageError):
        validate.domain(value)


@pytest.mark.parametrize("value,expected", GOOD_DOMAINS)
def test_domains_are_normalised(value, expected):
    assert validate.domain(value) == expected


@pytest.mark.parametrize("value", ["", "web", "frontend,frontend", "frontend,db", ","])
def test_bad_components(value):
    with pytest.raises(UsageError):
        validate.components(value)


def test_components_keep_order():
    assert validate.components("api, frontend") == ["api", "frontend"]


@pytest.mark.parametrize("value", ["node server.js", "web=node x", "frontend=",
                                   "frontend=node $HOME/x", "frontend=a\nb", "api=echo 100%",
                                   # systemd ExecStart= prefixes: privileges, ignored failure
                                   "frontend=+/bin/sh -c id", "frontend=!node x", "frontend=-node x",
                                   "frontend=@node x", "frontend=:node x", "frontend=|node x",
                                   "frontend=node x \\", "frontend=node x ; rm y",
                                   "frontend=node \x1b[2Jx", "frontend=node\tx"])
def test_bad_start_commands(value):
    with pytest.raises(UsageError):
        validate.start_command(value)


def test_start_command_parses():
    assert validate.start_command("api=python3 -m app --port=1") == ("api", "python3 -m app --port=1")


BAD_URLS = ["--upload-pack=touch /tmp/x", "-oProxyCommand=x", "ext::sh -c touch% /tmp/x",
            "fd::17", "https://exa mple.com/x.git", "ftp://example.com/x.git", "relative/path",
            "git@host:-oProxyCommand=x", "/srv/repo\nx", "", "https://x/" + "a" * 1000,
            "transport::https://example.com/x.git", "https://user:ghp_secret@github.com/a/b.git",
            "https://ghp_secret@github.com/a/b.git"]
GOOD_URLS = ["https://github.com/acme/shop.git", "ssh://git@github.com/acme/shop.git",
             "git@github.com:acme/shop.git", "file:///srv/repos/shop", "/srv/repos/shop"]
BAD_REFS = ["-x", "--output=/tmp/x", "main..dev", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[",
            "a\\b", "@{-1}", "refs/heads/", "a.lock", "/main", ".hidden", "a//b", "", "x" * 201]
GOOD_REFS = ["main", "v1.4.2", "feature/login", "HEAD", "0123abcd" * 5, "release-2026_11"]


GIT_INPUT = [(validate.repo_url, v, "invalid repository") for v in BAD_URLS] + \
            [(validate.git_ref, v, "invalid ref") for v in BAD_REFS]


@pytest.mark.parametrize("check, value, message", GIT_INPUT)
def test_bad_git_input_is_refused(check, value, message):
    with pytest.raises(UsageError, match=message) as err:
        check(value)
    assert "ghp_secret" not in str(err.value)  # a token is never repeated back


@pytest.mark.parametrize("check, value", [(validate.repo_url, v) for v in GOOD_URLS]
                         + [(validate.git_ref, v) for v in GOOD_REFS])
def test_good_git_input_passes(check, value):
    assert check(value) == value


def test_release_ids_and_keep_counts():
    assert validate.release_id("20261125T201500Z") == "20261125T201500Z"
    assert validate.release_id("20261125T201500Z-2") == "20261125T201500Z-2"
    for bad in ("latest", "../x", "20261125", "20261125T201500Z/.."):
        with pytest.raises(UsageError):
            validate.release_id(bad)
    assert validate.keep_count("5") == 5
    for bad in ("1", "0", "-3", "101", "five"):
        with pytest.raises(UsageError):
            validate.keep_count(bad)


def test_start_commands_may_use_port_and_host_only():
    assert validate.start_command("frontend=python3 -m http.server ${PORT}")[1].endswith("${PORT}")
    for bad in ("frontend=node $PORT", "frontend=node ${HOME}", "frontend=x ${PORT"):
        with pytest.raises(UsageError):
            validate.start_command(bad)


def test_a_bad_argument_is_one_line_with_control_characters_escaped(capsys):
    from siteops import cli
    p = cli.parser("demo", "a demo")
    p.add_argument("name", type=validate.site_name)
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["x\x1b[31m\ny"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert err.startswith("demo: error: argument name: invalid site name 'x\\x1b[31m\\ny'")
    assert err.rstrip().endswith("(see demo --help)")
    assert "\x1b" not in err


@pytest.mark.parametrize("value", ["-1", "9" * 9, "NaN", "1e3", "\uff19", ""])
def test_numbers_are_ascii_digits_in_range(value):
    with pytest.raises(validate.InvalidInput):
        validate.number("--n", 0, 1000)(value)


@pytest.mark.parametrize("ref", ["\u202eevil", "a\x1bb", "-x", "a b"])
def test_refs_refuse_bidi_and_control_characters(ref):
    with pytest.raises(validate.InvalidInput):
        validate.git_ref(ref)
