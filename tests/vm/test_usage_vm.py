"""sites usage on the VM, where the kernel accounts each site's slice: a site
under load shows its requests and CPU while an idle one does not, and a
site whose processes hold most of its memory limit is shown near it and
warned about by audit."""

import json
import time

from machine import SRC, events_of, hooks, start_receivers

HOLD = """\
import sys, time
data = bytearray(b"x") * int(sys.argv[1])  # written, so resident
print("holding", len(data), flush=True)
time.sleep(120)
"""


def usage(vm, *args) -> dict:
    rows = json.loads(vm.siteops(f"sites usage --json {' '.join(args)}").stdout)
    return {r["name"]: r for r in rows}


def test_a_site_under_load_shows_its_requests_and_cpu_an_idle_one_does_not(host):
    host.sh("rm -f /tmp/usage.stop /tmp/usage.json; setsid python3 "
            f"{SRC}/bench/load.py --host shop.test --rate 80 --workers 4 --duration 60 "
            "--stop-file /tmp/usage.stop --out /tmp/usage.json >/tmp/usage.log 2>&1 &")
    time.sleep(5)
    try:
        rows = usage(host, "--interval", "5", "--window", "30")
    finally:
        host.sh("touch /tmp/usage.stop")
    shop, blog = rows["shop"], rows["blog"]
    print(f"under load: shop {shop['requests']} requests, CPU {shop['cpu_percent']}%, "
          f"memory {shop['memory_bytes']} B; idle blog CPU {blog['cpu_percent']}%")
    # Earlier VM tests may have sent blog a request or two inside the window.
    assert shop["requests"] >= 100 and blog["requests"] * 50 < shop["requests"]
    assert shop["cpu_percent"] > 1.0 and shop["cpu_percent"] > 5 * max(blog["cpu_percent"], 0.1)
    assert shop["memory_bytes"] > 0 and shop["memory_peak_bytes"] >= shop["memory_bytes"]
    assert shop["tasks"] >= 2 and shop["redis_memory_bytes"] > 0
    assert shop["upstream_p99_ms"] is not None


def test_a_site_near_its_memory_limit_is_shown_and_warned_about(host):
    host.sh("cat > /srv/hold.py && chmod 644 /srv/hold.py", input=HOLD)
    host.siteops("limits blog --memory-max 256M")
    before = usage(host, "blog", "--interval", "0")["blog"]
    hold = int(0.94 * 256 * 2**20) - before["memory_bytes"]
    host.run_as_site("blog", 1, "blog-hold", f"/usr/bin/python3 /srv/hold.py {hold}")
    try:
        host.sh("for i in $(seq 60); do journalctl -u blog-hold -o cat | grep -q holding "
                "&& exit 0; sleep 0.5; done; exit 1")
        row = usage(host, "blog", "--interval", "0")["blog"]
        pct = 100 * row["memory_bytes"] / row["memory_max_bytes"]
        print(f"blog holds {pct:.0f}% of its 256M limit")
        assert row["memory_max_bytes"] == 256 * 2**20 and pct >= 90
        assert "/ 256.0 MiB" in host.siteops("sites usage blog --interval 0").stdout
        start_receivers(host, smtp=False)
        host.siteops("notify add webhook http://127.0.0.1:8765/hook")
        findings = json.loads(host.siteops("audit --json", check=False).stdout)["findings"]
        memory = [f for f in findings if f["id"] == "site.blog.memory"][0]
        assert memory["severity"] == "warning" and "of its limit" in memory["message"]
        shop = [f for f in findings if f["id"] == "site.shop.memory"][0]
        assert shop["severity"] == "ok"
        # The alert: said once, by the audit that saw it.
        said = [e for e in events_of(host, "problem") if e["check"] == "site.blog.memory"]
        assert len(said) == 1 and "of its limit" in said[0]["text"], hooks(host)
    finally:
        host.sh("systemctl stop blog-hold; systemctl reset-failed blog-hold", check=False)
    host.siteops("audit", check=False)
    assert [e["check"] for e in events_of(host, "recovered")].count("site.blog.memory") == 1
    host.siteops("notify remove webhook-1")
    host.sh("pkill -f '[r]eceivers.py'", check=False)
