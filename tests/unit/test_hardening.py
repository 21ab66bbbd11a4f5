"""The hardening baseline: settings edited into distribution files, audit rules
for paths the host has, drift, and what bootstrap runs outside a container."""

from siteops import hardening

from fakes import make_host, planned_commands

LOGIN_DEFS = "# comment\n#UMASK 077\nUMASK\t\t022\nPASS_MAX_DAYS\t99999\n"
UMASK = hardening.SETTINGS["/etc/login.defs"]


def test_a_setting_replaces_the_files_own_line_once():
    text = hardening.with_settings(LOGIN_DEFS, UMASK)
    assert text.splitlines() == ["# comment", "#UMASK 077", f"# {UMASK['UMASK'][0]}",
                                 "UMASK\t\t027", "PASS_MAX_DAYS\t99999"]
    assert hardening.with_settings(text, UMASK) == text  # idempotent


def test_a_missing_setting_is_added_with_its_reason():
    text = hardening.with_settings('# only comments\n#ENABLED="true"\n',
                                   hardening.SETTINGS["/etc/default/sysstat"])
    assert text.endswith('#ENABLED="true"\n# siteops: sysstat keeps 10-minute history of CPU, '
                         'memory, disk and network (`sar`): what happened at 3 am\n'
                         'ENABLED="true"\n')


def test_audit_rules_watch_only_paths_the_host_has(root):
    host, _ = make_host(root)
    (root / "etc/sudoers.d").mkdir(parents=True)
    (root / "etc/passwd").write_text("")
    rules = hardening.audit_rules(host, "-w /etc/passwd -p wa -k identity\n"
                                        "-w /etc/sudoers.d/ -p wa -k sudoers\n"
                                        "-w /var/spool/cron/ -p wa -k cron\n"
                                        "-a always,exit -F arch=b64 -S execve -k x\n")
    assert rules == ("-w /etc/passwd -p wa -k identity\n-w /etc/sudoers.d/ -p wa -k sudoers\n"
                     "-a always,exit -F arch=b64 -S execve -k x\n")


def vm(root, loaded):
    """A host that is not a container, whose kernel has these rules loaded."""
    return make_host(root, [(["systemd-detect-virt"], 1, "none\n"),
                            (["getent"], 2, ""), (["auditctl", "-l"], 0, loaded),
                            (["systemctl"], 0, "")])


def test_drift_and_unloaded_rules_are_reported(root):
    host, _ = vm(root, "-w /etc/passwd -p wa -k identity\n")
    (root / "etc/login.defs").write_text(LOGIN_DEFS)
    (root / "etc/passwd").write_text("")
    facts = hardening.facts(host)
    assert "/etc/login.defs" in facts["drift"] and "/etc/issue" in facts["drift"]
    assert facts["unloaded_rules"] == ["modules", "root-commands"]  # watches of absent paths left out


def test_bootstrap_loads_changed_rules_and_starts_auditd(root):
    host, _ = vm(root, "")
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/sysstat").write_text('ENABLED="false"\n')
    hardening.ensure(host)
    assert planned_commands(host) == ["systemctl daemon-reload", "augenrules --load",
                                      "systemctl restart sysstat.service"]
    written = host.written
    assert written[str(root / "etc/default/sysstat")].endswith('\nENABLED="true"\n')
    assert "install dccp /bin/false" in written[str(root / "etc/modprobe.d/siteops.conf")]
