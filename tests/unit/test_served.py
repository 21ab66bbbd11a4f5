"""A site runs what its live release declares: a component without a start
command has no instance, no upstream, and nginx sends its paths to the one
that runs."""


from siteops import model, nginx
from siteops import units
from siteops.paths import Paths

SITE = model.Site(name="du", slot=1, domains=["du.test"], components=["frontend", "api"],
                  ports={"frontend": 3110, "api": 4010, "redis": 5010},
                  live=model.Live("20261130T090000Z", 1),
                  releases={"20261130T090000Z": model.Release(
                      result="ok", commands={"frontend": "gunicorn app:app"},
                      health={"frontend": "/"})})


def test_a_web_only_release_runs_the_frontend_alone_and_nginx_sends_everything_there():
    assert units.live_ports(SITE) == {"frontend": 3111}
    assert units.live_instances(SITE) == ["du-frontend@3111.service"]
    conf = nginx.site_config(SITE, (1, 22, 1), None, Paths().of("du"))
    assert "upstream du_frontend" in conf and "upstream du_api" not in conf and "4011" not in conf
    assert "location /api/" not in conf and "proxy_pass http://du_frontend" in conf


def test_an_api_only_release_takes_every_path():
    site = SITE.copy()
    site.releases["20261130T090000Z"].commands = {"api": "node api.js"}
    conf = nginx.site_config(site, (1, 22, 1), None, Paths().of("du"))
    assert units.live_ports(site) == {"api": 4011}
    assert "proxy_pass http://du_api" in conf and "du_frontend" not in conf


def test_a_release_recorded_before_the_choice_runs_every_component():
    site = SITE.copy()
    site.releases["20261130T090000Z"].commands = {}
    assert units.live_ports(site) == {"frontend": 3111, "api": 4011}
