"""sites usage on booted Debian 12 and 13 machines: real nginx access logs in
the siteops format, the Prometheus export written by its timer's service,
and audit reading the same figures. (cgroup figures are proven on the VM
tier: the nspawn box's cgroup tree is not the host's.)"""

import json
import re

import pytest

PROM_DIR = "/var/lib/prometheus/node-exporter"


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    box.two_sites({})
    return box


def usage(box, *args) -> dict:
    rows = json.loads(box.siteops(f"sites usage --json --interval 0 {' '.join(args)}").stdout)
    return {r["name"]: r for r in rows}


def test_traffic_is_counted_per_site_from_its_own_access_log(host):
    host.sh("for i in $(seq 40); do curl -s -o /dev/null -H 'Host: shop.test' "
            "http://127.0.0.1/page$i; done")
    last = host.sh("tail -1 /srv/sites/shop/shared/logs/nginx-access.log").stdout
    assert re.search(r'"GET /page40 HTTP/1.1" 200 \d+ "-" "curl/[^"]+" rt=[\d.]+ '
                     r'urt="[\d.]+" t=\d+\.\d{3}$', last), last
    rows = usage(host, "--window", "120")
    shop, blog = rows["shop"], rows["blog"]
    assert shop["requests"] >= 40 and shop["status_2xx"] >= 40 and shop["status_5xx"] == 0
    assert shop["upstream_p50_ms"] is not None and shop["upstream_p99_ms"] >= shop["upstream_p50_ms"]
    assert blog["requests"] == 0 and blog["upstream_p50_ms"] is None
    assert shop["disk_bytes"] > 0 and shop["database_bytes"] > 0
    assert shop["limits"]["memory_max"] == "1G"
    table = host.siteops("sites usage --interval 0").stdout.splitlines()
    assert table[0].startswith("NAME") and table[1].startswith("shop")
    assert usage(host, "blog").keys() == {"blog"}


def test_the_timer_exports_the_figures_for_node_exporter(host):
    assert host.sh("systemctl is-enabled siteops-usage.timer").stdout.strip() == "enabled"
    # Without the collector's directory the service does not even start.
    host.sh("systemctl start siteops-usage.service")
    assert host.sh(f"test -e {PROM_DIR}/siteops.prom", check=False).returncode != 0
    host.sh(f"mkdir -p {PROM_DIR} && systemctl start siteops-usage.service")
    text = host.sh(f"cat {PROM_DIR}/siteops.prom").stdout
    assert re.search(r'^siteops_site_requests\{site="shop",status="2xx",window="300s"\} '
                     r'([4-9]\d|\d{3,})$', text, re.M), text
    assert 'siteops_site_requests{site="blog",status="2xx",window="300s"} 0' in text
    assert "# TYPE siteops_site_disk_bytes gauge" in text
    assert host.sh(f"ls -a {PROM_DIR}").stdout.split() == [".", "..", "siteops.prom"]


def test_audit_reads_the_same_figures_without_warning_a_calm_site(host):
    findings = json.loads(host.siteops("audit --json", check=False).stdout)["findings"]
    usage_warnings = [f for f in findings if re.match(r"site\.\w+\.(memory|errors)$", f["id"])
                      and f["severity"] != "ok"]
    assert usage_warnings == []
    errors = [f for f in findings if f["id"] == "site.shop.errors"]
    assert errors and errors[0]["severity"] == "ok", errors
