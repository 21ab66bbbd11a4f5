import pytest

from siteops import validate
from siteops.errors import UsageError

BAD_NAMES = ["", "a", "Shop", "1shop", "shop-2", "shop.x", "x" * 33, "root", "postgres",
             "deploy", "www-data", "pg_shop", "template1", "shop name", "shop;rm"]
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
                                   "frontend=node $HOME/x", "frontend=a\nb", "api=echo 100%"])
def test_bad_start_commands(value):
    with pytest.raises(UsageError):
        validate.start_command(value)


def test_start_command_parses():
    assert validate.start_command("api=python3 -m app --port=1") == ("api", "python3 -m app --port=1")
