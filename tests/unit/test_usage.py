"""sites usage: cgroup accounting, access-log traffic, the Prometheus export
and audit's thresholds, over a fake /sys/fs/cgroup and log (the VM tier
proves them on a real kernel)."""

import json

import pytest

from siteops import site_checks, usage
from siteops.commands import sites
from siteops.model import Limits, Site

from fakes import make_host

NOW = 1_790_000_000.0
SHOP = Site(name="shop", slot=0, ports={"frontend": 3100, "redis": 5000}, components=["frontend"],
            limits=Limits(memory_max="256M"))


def line(t, status=200, urt="0.012", path="/"):
    return (f'127.0.0.1 - - [26/Nov/2026:15:00:00 +0000] "GET {path} HTTP/1.1" {status} 12 '
            f'"-" "curl/8.0 \\"x\\"" rt=0.013 urt="{urt}" t={t:.3f}\n')


@pytest.fixture
def shop_files(root):
    cg = root / "sys/fs/cgroup/siteops.slice/siteops-shop.slice"
    (cg / "shop-redis.service").mkdir(parents=True)
    for name, text in {"memory.current": "250000000\n", "memory.peak": "260000000\n",
                       "memory.max": str(256 * 2**20) + "\n", "pids.current": "7\n",
                       "pids.max": "512\n", "cpu.stat": "usage_usec 5000000\nuser_usec 1\n",
                       "io.stat": "8:0 rbytes=100 wbytes=200 rios=1\n259:0 rbytes=1 wbytes=2\n",
                       "shop-redis.service/memory.current": "4096\n"}.items():
        (cg / name).write_text(text)
    logs = root / "srv/sites/shop/shared/logs"
    logs.mkdir(parents=True)
    old = [line(NOW - 600 + i) for i in range(5)]  # outside a 300 s window
    recent = ([line(NOW - 100 + i, urt=f"0.{i:03d}") for i in range(90)]
              + [line(NOW - 5, 500), line(NOW - 4, 502, urt="0.001, 0.002"), line(NOW - 3, 404),
                 line(NOW - 2, 429, urt="-"), line(NOW - 1, 301), "garbage line\n"])
    (logs / "nginx-access.log").write_text("".join(old + recent))
    return cg


def test_cgroup_accounting_is_read_from_the_slice(root, shop_files):
    host, _ = make_host(root)
    assert usage.cgroup(host, "shop") == {
        "memory_bytes": 250000000, "memory_peak_bytes": 260000000,
        "memory_max_bytes": 256 * 2**20, "cpu_usec": 5000000, "tasks": 7, "tasks_max": 512,
        "io_read_bytes": 101, "io_write_bytes": 202, "redis_memory_bytes": 4096}
    # A stopped slice (no directory) or a kernel without memory.peak: None, not an error.
    assert set(usage.cgroup(host, "blog").values()) == {None}
    (shop_files / "memory.max").write_text("max\n")
    assert usage.cgroup(host, "shop")["memory_max_bytes"] is None


def test_traffic_counts_only_the_window_from_the_end_of_the_log(root, shop_files):
    host, _ = make_host(root)
    t = usage.traffic(host, "shop", 300, NOW)
    assert (t["requests"], t["status_2xx"], t["status_3xx"], t["status_4xx"],
            t["status_5xx"], t["status_429"]) == (95, 90, 1, 2, 2, 1)
    assert t["upstream_p50_ms"] == pytest.approx(43) and t["upstream_p99_ms"] == pytest.approx(89)
    assert usage.traffic(host, "shop", 2.5, NOW)["requests"] == 2
    assert usage.traffic(host, "blog", 300, NOW)["requests"] == 0  # no log yet


def test_cpu_share_is_measured_over_the_interval(root, shop_files, monkeypatch):
    host, runner = make_host(root)
    monkeypatch.setattr(usage, "databases", lambda host: {"shop": 8192})
    monkeypatch.setattr(usage, "disk", lambda host, sites: {"shop": 4096})

    def busy(seconds):  # half a CPU during the interval
        (shop_files / "cpu.stat").write_text(f"usage_usec {5000000 + int(seconds * 5e5)}\n")
    row = usage.collect(host, [SHOP], interval=2, window=300, clock=lambda: NOW, sleep=busy)[0]
    assert row["cpu_percent"] == 50.0 and row["database_bytes"] == 8192
    assert row["disk_bytes"] == 4096
    assert row["limits"]["memory_max"] == "256M" and row["requests"] == 95


def test_prometheus_text_format(root, shop_files, monkeypatch):
    host, _ = make_host(root)
    text = usage.prometheus(usage.collect(host, [SHOP], interval=0, with_sizes=False,
                                          clock=lambda: NOW))
    assert "# TYPE siteops_site_cpu_seconds_total counter\n" in text
    assert 'siteops_site_cpu_seconds_total{site="shop"} 5\n' in text
    assert 'siteops_site_memory_bytes{site="shop"} 2.5e+08\n' in text
    assert 'siteops_site_requests{site="shop",status="5xx",window="300s"} 2\n' in text
    assert "siteops_site_database_bytes{" not in text  # unknown: left out, not 0
    for sample in (l for l in text.splitlines() if not l.startswith("#")):
        name, value = sample.rsplit(" ", 1)
        float(value)


def test_audit_warns_near_the_memory_limit_and_on_many_5xx():
    row = {"memory_bytes": 95, "memory_max_bytes": 100, "requests": 100, "status_5xx": 6,
           "window_seconds": 300}
    found = {f.id: f for f in site_checks.usage_checks(SHOP, row)}
    assert found["site.shop.memory"].severity == "warning"
    assert "95% of its limit" in found["site.shop.memory"].message
    assert found["site.shop.errors"].severity == "warning"
    calm = dict(row, memory_bytes=80, status_5xx=5)
    assert {f.severity for f in site_checks.usage_checks(SHOP, calm)} == {"ok"}
    few = dict(row, requests=10, status_5xx=10, memory_max_bytes=None)
    assert site_checks.usage_checks(SHOP, few) == []  # no limit, too few requests for a rate


def test_usage_table_and_json(root, shop_files, monkeypatch, capsys):
    (root / "var/lib/siteops").mkdir(parents=True)
    (root / "var/lib/siteops/registry.json").write_text(json.dumps(
        {"version": 2, "sites": {"shop": {"name": "shop", "slot": 0, "ports": SHOP.ports,
                                          "components": ["frontend"], "state": "ready"}}}))
    host, _ = make_host(root)
    monkeypatch.setattr(usage, "databases", lambda host: {})
    monkeypatch.setattr(usage, "du", lambda host, paths: {str(p): 2**20 for p in paths})
    args = sites.build_parser().parse_args(["usage", "--interval", "0"])
    sites.run(host, args)
    out = host.out.getvalue()
    assert out.splitlines()[0].split()[:3] == ["NAME", "MEMORY", "/"]
    assert "shop" in out.splitlines()[1]
    with pytest.raises(SystemExit):
        sites.build_parser().parse_args(["usage", "--interval", "-1"])
