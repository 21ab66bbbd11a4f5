"""sites list and doc from the registry recorded in a real box, with the
live facts they read (du, systemctl, psql) answered by the fake runner."""

import json
from pathlib import Path

from siteops import model, units
from siteops.commands import sites

from fakes import make_host

RECORDED = json.loads((Path(__file__).parent / "data/box-facts.json").read_text())


def write_registry(root):
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(RECORDED["registry"]))
    for name in RECORDED["registry"]["sites"]:
        (root / "srv/sites" / name).mkdir(parents=True)


LOADED = "".join(f"{u} loaded active running x\n" for s in RECORDED["registry"]["sites"].values()
                 for u in units.live_units(model.site_from_json(s)))
RULES = [(["du"], 0, "61440\t{root}/srv/sites/alpha\n45056\t{root}/srv/sites/beta\n"),
         (["systemctl", "list-units"], 0, LOADED),
         (["runuser"], 0, json.dumps({"connections": 7, "max_connections": 100}))]


def rules(root):
    return [(RULES[0][0], 0, RULES[0][2].format(root=root))] + RULES[1:]


def test_list_shows_live_ports_and_disk(root):
    write_registry(root)
    host, runner = make_host(root, rules(root))
    recorded = [model.site_from_json(s) for s in RECORDED["registry"]["sites"].values()]
    rows = sites.gather(host, sorted(recorded, key=lambda s: s.slot))
    lines = sites.list_lines(rows)
    assert lines[0].split() == ["NAME", "SLOT", "PORTS", "DOMAINS", "COMPONENTS", "STATE", "LIVE",
                                "TLS", "DISK"]
    assert lines[1].split()[:6] == ["alpha", "0", "3100,5000", "alpha.test", "frontend", "ready"]
    assert lines[2].split()[:3] == ["beta", "1", "3110,4010,5010"] and lines[2].endswith("44 KiB")
    # One systemctl call for every unit of every site, one du for every site.
    assert [c[:2] for c in runner.calls if c[0] == "systemctl"] == [["systemctl", "list-units"]]
    assert all(state == "active" for r in rows for state in r["units"].values()), rows
    assert sum(1 for c in runner.calls if c[0] == "du") == 1


def test_doc_is_the_reference_registry_section(root):
    write_registry(root)
    host, runner = make_host(root, rules(root))
    assert sites.main(["doc", "--dry-run"], host) == 0
    doc = host.out.getvalue()
    assert doc.startswith("## ACTIVE SITES REGISTRY (generated)\n")
    for heading in ("### Site #1: alpha", "### Site #2: beta", "### Port allocation summary",
                    "### Domain registry", "### Database registry", "### Shared resource usage",
                    "### TLS renewal"):
        assert f"\n{heading}\n" in doc or doc.startswith(heading)
    assert "| 3100-3109, 4000-4009, 5000-5009 | alpha |" in doc
    assert "| PostgreSQL connections | 7/100 |" in doc
    assert "| frontend | 3110 | active |" in doc and "| api | 4010 | active |" in doc


def test_show_names_the_instances_kept_warm(root):
    write_registry(root)
    host, _ = make_host(root, rules(root))
    site = model.site_from_json(RECORDED["registry"]["sites"]["alpha"])
    rid = site.live.release
    site.warm = model.Live(rid, 1 - site.live.offset)
    row = sites.gather(host, [site])[0]
    lines = sites.show_lines(row, site)
    port = 3100 + site.warm.offset
    assert f"kept warm:    {rid} on alpha-frontend@{port}.service (deploy --keep-warm: " \
           "a rollback there needs no start)" in lines
    site.warm = None
    assert "kept warm:    -" in sites.show_lines(sites.gather(host, [site])[0], site)
