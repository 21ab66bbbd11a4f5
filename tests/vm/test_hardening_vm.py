"""The hardening baseline on a machine with a kernel of its own (Debian 13):
kernel settings, refused modules, auditd's rules and records, no core dumps,
and all of it, with the sites, back after a reboot. (Lynis's index over the
same VM: bench/lynis.py.)"""

import json

from machine import BIND, SRC


def finding(host, id_: str) -> dict:
    doc = json.loads(host.sh(f"{SRC}/bin/audit --json", check=False).stdout)
    return next(f for f in doc["findings"] if f["id"] == id_)


SYSCTLS = {"kernel.kptr_restrict": "2", "kernel.dmesg_restrict": "1",
           "kernel.yama.ptrace_scope": "1", "net.ipv4.conf.all.accept_redirects": "0",
           "net.ipv4.conf.all.rp_filter": "1", "fs.protected_regular": "2",
           "kernel.core_pattern": "|/bin/false"}
AUDIT_KEYS = ("identity", "sudoers", "sshd", "ssh-keys", "siteops", "nginx", "units",
              "modules", "root-commands")


def running_sysctls(host) -> dict:
    return dict(zip(SYSCTLS, host.sh("sysctl -n " + " ".join(SYSCTLS)).stdout.split()))


def loaded_audit_keys(host) -> set:
    loaded = host.sh("auditctl -l").stdout
    return {k for k in AUDIT_KEYS if f"-k {k}\n" in loaded + "\n" or f"key={k}\n" in loaded + "\n"}


def logged(host, key: str, needle: str) -> bool:
    """needle appears in auditd's log under key within 20 s (auditd writes
    asynchronously; --input-logs: without a terminal ausearch reads stdin)."""
    return host.sh(f"for i in $(seq 40); do ausearch --input-logs -i -k {key} 2>/dev/null | grep -q -- {needle} "
                   "&& exit 0; sleep 0.5; done; exit 1", check=False).returncode == 0


def test_the_kernel_settings_baseline_is_applied_and_audited(host):
    assert running_sysctls(host) == SYSCTLS
    assert finding(host, "host.sysctl")["severity"] == "ok"
    host.sh("sysctl -q -w kernel.kptr_restrict=0")
    found = finding(host, "host.sysctl")
    assert found["severity"] == "warning" and "kernel.kptr_restrict = 0" in found["message"]
    host.siteops("bootstrap")
    assert host.sh("sysctl -n kernel.kptr_restrict").stdout.strip() == "2"
    assert finding(host, "host.sysctl")["severity"] == "ok"
    assert host.sh("curl -s -H 'Host: shop.test' http://127.0.0.1/").stdout.startswith("shop python")


def test_unused_protocols_and_drivers_cannot_be_loaded(host):
    refused = host.sh("modprobe --showconfig | grep '^install .* /bin/false$'").stdout.split()
    modules = [m.replace("-", "_") for m in refused[1::3]]  # modprobe's spelling
    have = [m for m in modules
            if host.sh(f"modinfo -F filename {m}", check=False).returncode == 0]
    assert {"sctp", "usb_storage", "hfsplus"} <= set(have)  # Debian 13's kernel has them
    for module in have:
        assert host.sh(f"modprobe {module}", check=False).returncode != 0, module
    assert not {"sctp", "dccp"} & {l.split()[0] for l in host.sh("lsmod").stdout.splitlines()}
    # Opening a socket of the kind, which would load the module on demand, fails.
    res = host.sh("python3 -c 'import socket; socket.socket(socket.AF_INET, "
                  "socket.SOCK_STREAM, socket.IPPROTO_SCTP)'", check=False)
    assert res.returncode == 1 and "Protocol not supported" in res.stderr, res.stderr


def test_auditd_records_changes_and_the_commands_root_runs(host):
    assert host.sh("systemctl is-active auditd").stdout.strip() == "active"
    assert loaded_audit_keys(host) == set(AUDIT_KEYS)
    host.sh("touch /etc/siteops/audit-probe && rm /etc/siteops/audit-probe")
    host.sh("/bin/echo siteops-probe-7f3a >/dev/null")  # root's SSH login: auid 0
    assert logged(host, "siteops", "audit-probe")
    assert logged(host, "root-commands", "siteops-probe-7f3a")
    assert finding(host, "host.hardening")["severity"] == "ok"
    host.sh("auditctl -D")  # someone deletes the rules
    found = finding(host, "host.hardening")
    assert found["severity"] == "warning" and "audit rules not loaded: " in found["message"] \
        and "identity" in found["message"], found
    host.siteops("bootstrap")
    assert loaded_audit_keys(host) == set(AUDIT_KEYS)
    assert finding(host, "host.hardening")["severity"] == "ok"


def crash_leaves(host) -> str:
    """What a process of site shop that aborts, with no core size limit, leaves
    in its working directory."""
    host.sh("rm -rf /tmp/crash && mkdir /tmp/crash && chmod 1777 /tmp/crash")
    # setpriv, not runuser: runuser's PAM session would apply limits.d's core 0.
    # The shell stays the parent (`; echo`): sshd penalises a source whose
    # session process dies of a signal (PerSourcePenalties).
    res = host.sh("cd /tmp/crash && prlimit --core=unlimited:unlimited setpriv --reuid=shop "
                  "--regid=shop --clear-groups python3 -c 'import os; os.abort()'; "
                  "echo exit $?")
    assert res.stdout.strip().endswith("exit 134"), res  # SIGABRT
    return host.sh("ls -A /tmp/crash").stdout.strip()


def test_a_crashing_process_leaves_no_core_dump(host):
    assert host.sh("ulimit -Hc").stdout.strip() == "0"  # login sessions (limits.d)
    host.sh("sysctl -q -w kernel.core_pattern=core")  # the kernel's default ...
    try:
        assert crash_leaves(host).startswith("core")  # ... writes the app's memory to disk
    finally:
        host.sh("sysctl -q -p /etc/sysctl.d/90-siteops.conf")
    assert crash_leaves(host) == ""  # the baseline sends it to /bin/false




def blog_processes(host) -> str:
    return host.sh("ps -u blog -o args= || true").stdout.strip()


def test_after_a_reboot_the_baseline_and_the_sites_are_back(host):
    """blog sleeps through the reboot: nothing of it starts at boot but its
    door (held by systemd), shop cannot bind its ports meanwhile, and its
    first request wakes it."""
    host.siteops("limits blog --sleep-after 10s")
    host.sh("for i in $(seq 120); do ps -u blog >/dev/null || exit 0; sleep 1; done; exit 1")
    host.reboot()
    assert running_sysctls(host) == SYSCTLS  # systemd-sysctl read the file at boot
    assert loaded_audit_keys(host) == set(AUDIT_KEYS)  # augenrules loaded the rules
    assert host.sh("sysctl -n net.ipv4.ip_local_reserved_ports").stdout.strip() == "10000-39999"
    doc = json.loads(host.sh(f"{SRC}/bin/audit --json", check=False).stdout)
    bad = [f for f in doc["findings"] if f["severity"] != "ok"]
    assert bad == [], bad
    assert blog_processes(host) == ""  # audit did not wake it either
    listeners = host.sh("ss -Hltnp '( sport >= :3110 and sport <= :3119 )'").stdout
    assert "systemd" in listeners and "python" not in listeners, listeners
    host.sh("cat > /srv/bindtry.py && chmod 644 /srv/bindtry.py", input=BIND)
    host.run_as_site("shop", 0, "shop-bind", "/usr/bin/python3 /srv/bindtry.py 3110 3111 3118 3119")
    host.sh("for i in $(seq 60); do systemctl is-active --quiet shop-bind || exit 0; sleep 0.5; done")
    out = host.sh("journalctl -u shop-bind --no-pager -o cat").stdout
    for port in (3110, 3111, 3118, 3119):
        assert f"{port} refused" in out, out
    for site in ("shop", "blog"):  # blog's first request wakes it
        out = host.sh(f"curl -s -m 60 -H 'Host: {site}.test' http://127.0.0.1/").stdout
        assert out.startswith(f"{site} python"), out
    host.siteops("limits blog --sleep-after never")
