"""Log drains on a real booted Debian machine: a site's logs shipped by the
distribution's rsyslog to a real rsyslog collector over TLS (its own CA);
RFC 5424 records naming the site, the host and the log; a neighbour's
lines never shipped; a collector with a certificate the drain does not
trust gets nothing; a 60 s outage (the collector unreachable) and log
rotation under a steady stream, every line counted once, in order; a
collector restarted losing only what was in flight; bad input refused with nothing changed;
audit and --fix; drain add stopped at every step converging."""

import json
import re
import time

import pytest

from machine import SRC, commit, killed_at, signals_for, step_count, stopped_by, until

COLLECTOR = "/srv/collector"
# Server side of the collector: TLS with a certificate for collector.test,
# every record written as received (the raw RFC 5424 text).
COLLECTOR_CONF = f"""\
global(workDirectory="{COLLECTOR}/spool"
       DefaultNetstreamDriverCAFile="{COLLECTOR}/ca.pem"
       DefaultNetstreamDriverCertFile="{COLLECTOR}/server.pem"
       DefaultNetstreamDriverKeyFile="{COLLECTOR}/server.key")
main_queue(queue.type="Direct")  # written as received: a stop loses nothing received
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="6514" ruleset="in")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="in") {{ action(type="omfile" file="{COLLECTOR}/received.log" template="raw") }}
"""
# A second CA, whose certificate the collector does not have.
CERTS = f"""\
set -e
mkdir -p {COLLECTOR}/spool && cd {COLLECTOR}
for ca in ca other-ca; do
  openssl req -x509 -newkey rsa:2048 -nodes -keyout $ca.key -out $ca.pem -days 2 \\
    -subj /CN=$ca 2>/dev/null
done
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \\
  -subj /CN=collector.test 2>/dev/null
printf 'subjectAltName=DNS:collector.test\\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \\
  -days 2 -extfile ext 2>/dev/null
grep -q collector.test /etc/hosts || echo '127.0.0.1 collector.test' >> /etc/hosts
"""
APP = {
    "app.py": """\
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "3"); self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
""",
    # A steady stream: 50 numbered lines a second into worker-tick.log.
    "tick.py": "import itertools, time\nfor i in itertools.count():\n"
               "    print(f'tick {i}', flush=True)\n    time.sleep(0.02)\n",
    "siteops.toml": '[frontend]\nstart = "python3 app.py"\n\n[workers.tick]\n'
                    'command = "python3 -u tick.py"\n',
}
URL = "syslog+tls://collector.test:6514"


def collector(box, on: bool) -> None:
    if on:
        box.sh(f"systemd-run --quiet --unit=collector rsyslogd -n -f {COLLECTOR}/collector.conf "
               "-i /run/collector.pid && for i in $(seq 50); do ss -ltn | grep -q ':6514 ' "
               "&& break; sleep 0.1; done")
    else:
        # A stop that ended `failed` keeps the transient unit loaded, and the
        # next systemd-run of it is refused (seen in CI: the boxes' systemd
        # sometimes cannot kill a cgroup, "Input/output error").
        box.sh("systemctl stop collector; systemctl reset-failed collector 2>/dev/null || true")


def received(box) -> list[str]:
    return box.sh(f"cat {COLLECTOR}/received.log 2>/dev/null || true").stdout.splitlines()


def ticks(lines: list[str], site: str = "shop") -> list[int]:
    return [int(m.group(1)) for line in lines
            if (m := re.search(rf" {site}\.worker-tick - - \[[^]]*\] tick (\d+)$", line))]


def get(box, site: str, path: str = "/") -> None:
    box.sh(f"curl -sS -o /dev/null -H 'Host: {site}.test' 'http://127.0.0.1{path}'")


@pytest.fixture(scope="module")
def host(box):
    box.siteops("bootstrap")
    for site in ("shop", "blog"):
        box.siteops(f"add-site {site} --domain {site}.test --components frontend")
        commit(box, f"/srv/repos/{site}", APP, site)
        box.siteops(f"deploy {site} --repo /srv/repos/{site}")
    box.sh(CERTS)
    box.sh(f"cat > {COLLECTOR}/collector.conf", input=COLLECTOR_CONF)
    collector(box, True)
    return box


def test_bad_input_is_refused_with_nothing_changed(host):
    before = host.sh("cat /var/lib/siteops/registry.json").stdout
    for args, why in [
        ("shop drain add ftp://collector.test:6514", "a drain is syslog+tls://HOST:PORT"),
        ("shop drain add syslog+tls://collector.test", "lacks the port"),
        ("shop drain add syslog+tls://collector.test:6514/x", "nothing after the port"),
        ("shop drain add syslog://collector.test:514", "pass --plain"),
        (f"shop drain add {URL} --ca /etc/hostname", "not a PEM certificate"),
        (f"shop drain add {URL} --ca {COLLECTOR}/ca.key", "private key"),
        (f"nosuch drain add {URL}", "no site 'nosuch'"),
        ("shop drain remove syslog://10.0.0.1:514", "has no drain"),
    ]:
        res = host.siteops(f"logs {args}", check=False)
        assert res.returncode == 2 and why in res.stderr, (args, res.stderr)
    assert host.sh("cat /var/lib/siteops/registry.json").stdout == before
    assert host.sh("ls /etc/rsyslog.d/ | grep siteops || true").stdout == ""
    assert host.sh("systemctl is-active rsyslog || true").stdout.strip() != "active"


def test_a_sites_logs_arrive_as_rfc5424_records_over_tls_and_no_neighbours(host):
    out = host.siteops(f"logs shop drain add {URL} --ca {COLLECTOR}/ca.pem --dry-run").stdout
    assert 'StreamDriverPermittedPeers="collector.test"' in out
    assert host.sh("ls /etc/rsyslog.d/ | grep siteops || true").stdout == ""
    host.siteops(f"logs shop drain add {URL} --ca {COLLECTOR}/ca.pem")
    # The neighbour ships to the same collector, but trusts another CA: the
    # TLS handshake fails, nothing of it arrives.
    host.siteops(f"logs blog drain add {URL} --ca {COLLECTOR}/other-ca.pem")
    get(host, "shop", "/shop-marker")
    get(host, "blog", "/blog-marker")
    until(lambda: any("/shop-marker" in line for line in received(host)), "no shop line")
    until(lambda: len(ticks(received(host))) > 50, "no tick")
    lines = received(host)
    access = next(line for line in lines if "/shop-marker" in line)
    assert re.match(r"<\d+>1 \S+ siteops-box shop\.nginx-access - - "
                    r'\[siteops@32473 site="shop"\] ', access), access
    time.sleep(6)  # the blog drain retries every 5 s: it still gets nothing through
    lines = received(host)
    assert not [line for line in lines if "blog" in line], [l for l in lines if "blog" in l][:3]
    doc = json.loads(host.siteops("logs shop drain list --json").stdout)
    assert [d["url"] for d in doc] == [URL] and doc[0]["ca"] == "given"
    # rsyslog reads the site's logs; the site cannot read rsyslog's files.
    assert host.sh("stat -c '%a %U' /etc/rsyslog.d/60-siteops-shop.conf").stdout == "644 root\n"


def missing(numbers: list[int]) -> list[tuple[int, int]]:
    """The ranges of numbers missing between the first and the last."""
    seen, gaps = set(numbers), []
    for n in range(min(numbers), max(numbers) + 1):
        if n not in seen:
            if gaps and gaps[-1][1] == n - 1:
                gaps[-1] = (gaps[-1][0], n)
            else:
                gaps.append((n, n))
    return gaps


def written(box) -> int:
    """The last tick the worker has written to its log (just rotated: the next)."""
    last = until(lambda: box.sh("tail -n1 /srv/sites/shop/shared/logs/worker-tick.log"
                                ).stdout.split(), "the worker writes nothing", 5)
    return int(last[1])


BLOCK = ("nft add table inet outage && nft add chain inet outage out "
         "'{ type filter hook output priority 0; }' && "
         "nft add rule inet outage out tcp dport 6514 drop")


def test_an_outage_and_log_rotation_lose_and_repeat_no_line(host):
    """The collector unreachable for 60 s (its packets dropped; 10 s on
    Debian 12, whose lane runs longer in CI) under the worker's 50 lines a second, then
    logrotate -f twice: every line from the first to the last arrives
    once, in order."""
    outage = 10 if "bookworm" in str(host.image) else 60
    until(lambda: len(ticks(received(host))) > 100, "no tick")
    marks = {"blocked": written(host)}
    host.sh(BLOCK)
    time.sleep(outage)
    marks["unblocked"] = written(host)
    host.sh("nft delete table inet outage")
    for n in (1, 2):
        time.sleep(2)
        marks[f"rotation {n}"] = written(host)
        host.sh("logrotate -f /etc/logrotate.d/siteops-shop")
    last = written(host)
    until(lambda: max(ticks(received(host))) >= last,
          lambda: f"the queue did not drain: last tick {max(ticks(received(host)))}", 150)
    got = ticks(received(host))
    disorder = [got[i - 3:i + 3] for i in range(1, len(got)) if got[i] < got[i - 1]]
    repeated = sorted(n for n in set(got) if got.count(n) > 1)
    assert (missing(got), repeated, disorder) == ([], [], []), \
        f"missing {missing(got)}, repeated {repeated}, out of order {disorder}; {marks}"
    print(f"drain: {len(got)} lines, a {outage} s outage and 2 rotations: none lost or repeated")


def test_a_burst_past_the_queues_memory_loses_no_line(host):
    """80,000 lines appended at once (four times what a drain's queue holds
    in memory): the queue spills to disk and the site's reading waits; every
    line arrives once. (Before the site had a queue of its own and records
    waited for room, 16,899 of 200,000 were dropped this way.)"""
    n = 80000
    host.sh(f"seq -f 'burst %g end' 1 {n} >> /srv/sites/shop/shared/logs/frontend.log")
    def arrived() -> int:
        return int(host.sh(f"grep -c ' burst [0-9]* end' {COLLECTOR}/received.log",
                           check=False).stdout.split()[0] or 0)
    until(lambda: arrived() >= n, lambda: f"{arrived()} of {n} arrived", 240)
    got = host.sh(f"grep -o ' burst [0-9]* end' {COLLECTOR}/received.log | sort | uniq -d "
                  "| wc -l").stdout.strip()
    assert (arrived(), got) == (n, "0")


def test_a_collector_restarted_loses_at_most_what_was_in_flight(host):
    """syslog over TLS has no acknowledgement (RFC 5425): what the collector
    had not read when it stopped is lost with its connection. Bounded: only
    lines of the last 2 s before the stop; everything after arrives."""
    stop = written(host)
    collector(host, False)
    time.sleep(5)
    collector(host, True)
    last = written(host)
    until(lambda: max(ticks(received(host))) >= last, "the queue did not drain", 60)
    got = [n for n in ticks(received(host)) if n > stop - 500]
    lost = [n for a, b in missing(got) for n in range(a, b + 1)]
    assert all(stop - 100 <= n <= stop + 50 for n in lost), (stop, missing(got))
    print(f"drain: the collector restarted: {len(lost)} lines in flight lost")


def test_audit_finds_a_drain_file_changed_and_fix_renders_it(host):
    conf = "/etc/rsyslog.d/60-siteops-shop.conf"
    host.sh(f"sed -i 's/collector.test/evil.test/g' {conf}")
    res = json.loads(host.siteops("audit shop --json", check=False).stdout)
    assert f"site.shop.file:{conf}" in [f["id"] for f in res["findings"] if f["severity"] != "ok"]
    host.siteops("audit shop --fix", check=False)
    assert "evil.test" not in host.sh(f"cat {conf}").stdout
    res = json.loads(host.siteops("audit shop --json", check=False).stdout)
    assert [f["id"] for f in res["findings"] if ".file:" in f["id"] and f["severity"] != "ok"] == []


def test_audit_finds_the_hosts_shared_drain_file_changed_once_and_fix_renders_it(host):
    shared = "/etc/rsyslog.d/50-siteops.conf"
    original = host.sh(f"cat {shared}").stdout
    host.sh(f"echo '# edited' >> {shared}")
    res = json.loads(host.siteops("audit --json", check=False).stdout)
    drift = [f["id"] for f in res["findings"] if f["severity"] != "ok" and ".file:" in f["id"]]
    assert drift == [f"host.file:{shared}"], drift  # one finding, not one a site
    host.siteops("audit --fix", check=False)
    assert host.sh(f"cat {shared}").stdout == original
    assert host.sh("systemctl is-active rsyslog").stdout.strip() == "active"


def test_drain_add_and_remove_stopped_at_every_step_converge(host):
    """add and remove sent KILL, INT or TERM after each of their steps:
    rsyslog's whole configuration stays valid and running, and the command
    run again converges (the registry, the file, rsyslog agree)."""
    if "bookworm" not in str(host.image):
        pytest.skip("the crash harness runs on Debian 12 only (CI time)")
    url = "syslog://127.0.0.1:6600"
    add, remove = f"logs shop drain add {url} --plain", f"logs shop drain remove {url}"
    n = step_count(host.siteops(add).stdout)
    host.siteops(remove)
    stops = 0
    for k, signal in signals_for(n):
        for command, present in ((add, True), (remove, False)):
            stops += stopped_by(killed_at(host, k, command, signal), signal)
            host.sh("rsyslogd -N1 >/dev/null 2>&1")
            host.siteops(command)
            listed = url in host.siteops("logs shop drain list").stdout
            in_file = url in host.sh("cat /etc/rsyslog.d/60-siteops-shop.conf").stdout
            assert listed == in_file == present, (command, k, signal)
            assert host.sh("systemctl is-active rsyslog").stdout.strip() == "active"
            assert not host.sh("ls /var/lib/siteops/rsyslog-restart-pending 2>/dev/null || true"
                               ).stdout
    assert n >= 2 and stops == 2 * n
    assert [d["url"] for d in json.loads(host.siteops("logs shop drain list --json").stdout)] \
        == [URL]


def test_audit_reports_a_drain_that_delivers_nothing_and_remove_takes_it_away(host):
    """blog's drain (a CA the collector's certificate does not chain to) has
    delivered nothing since it was added while its worker's lines wait:
    audit says so (here after 90 s instead of an hour); shop's is fine."""
    if "bookworm" in str(host.image):
        pytest.skip("waits minutes for rsyslog's statistics: on Debian 13 only (CI time)")
    def found() -> list[str]:
        res = host.sh(f"SITEOPS_DRAIN_FAILING_AFTER=90 {SRC}/bin/audit --json", check=False)
        return [f["id"] for f in json.loads(res.stdout)["findings"]
                if f["id"].endswith(".drains") and f["severity"] != "ok"]
    assert until(found, "no drain reported failing", 200) == ["site.blog.drains"]
    host.siteops(f"logs blog drain remove {URL}")
    assert host.sh("ls /etc/rsyslog.d/").stdout.split().count("60-siteops-blog.conf") == 0
    assert found() == []
