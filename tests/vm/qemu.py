"""A QEMU virtual machine with a kernel of its own, for what the nspawn box cannot
show: cgroup v2 limits, systemd's SocketBind BPF programs. TCG emulation (no
KVM here): it boots in about 30 s and runs Python some 8x slower than the host.
Each VM boots from the cached image with `snapshot=on`, so it starts fresh and
leaves the image untouched. Test code drives it only through `VM.sh`, over SSH
on a forwarded loopback port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from machine import SRC, Machine  # tests/box, on sys.path (conftest)

REPO = Path(__file__).resolve().parents[2]


def build_image() -> Path:
    out = subprocess.run(["bash", str(REPO / "tests/vm/build-image.sh")], check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VM(Machine):
    kind = "vm"

    def __init__(self, image: Path, memory_mb: int = 2048):
        self.image = image
        self.memory_mb = memory_mb
        self.work = Path(tempfile.mkdtemp(prefix="siteops-vm-"))
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.key = self.work / "id_ed25519"
        shutil.copy(image / "id_ed25519", self.key)
        os.chmod(self.key, 0o600)

    def start(self, timeout: float = 300) -> "VM":
        """Boot the VM and wait until SSH answers and systemd is up."""
        self.proc = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max",
             "-m", str(self.memory_mb), "-smp", "2",
             "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
             "-append", "root=/dev/vda rw console=ttyS0 quiet",
             "-drive", f"file={self.image / 'disk.img'},format=raw,if=virtio,snapshot=on",
             "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
             "-device", "virtio-net-pci,netdev=n0",
             "-display", "none", "-serial", f"file:{self.work / 'console.log'}",
             "-monitor", "none"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.wait_booted(timeout)
        self.sh(f"mkdir -p {SRC}")
        self.copy_checkout()
        return self

    def wait_booted(self, timeout: float = 300) -> None:
        """Wait until SSH answers and systemd has finished starting up."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"qemu exited: {self.console()[-2000:]}")
            res = self.sh("systemctl is-system-running", check=False, timeout=20)
            if res.stdout.strip() in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"vm did not come up: {res.stderr}\n{self.console()[-2000:]}")
            time.sleep(2)

    def reboot(self, timeout: float = 300) -> None:
        """Reboot the guest (its disk's changes survive: the snapshot lives as
        long as qemu) and wait until it is up again."""
        boot = self.sh("cat /proc/sys/kernel/random/boot_id").stdout
        self.sh("systemctl reboot", check=False, timeout=20)
        deadline = time.monotonic() + timeout
        while self.sh("cat /proc/sys/kernel/random/boot_id", check=False,
                      timeout=20).stdout in (boot, ""):
            if time.monotonic() > deadline:
                raise RuntimeError(f"vm did not reboot: {self.console()[-2000:]}")
            time.sleep(2)
        self.wait_booted(timeout)

    def copy_checkout(self) -> None:
        """The suite's files, as the box binds them (bin, lib, templates, bench)."""
        tar = subprocess.run(["tar", "-C", str(REPO), "-c", "--exclude=__pycache__",
                              "bin", "lib", "templates", "bench"], capture_output=True,
                             check=True).stdout
        self.sh(f"tar -x -C {SRC}", input_bytes=tar)

    def console(self) -> str:
        try:
            return (self.work / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ssh_argv(self) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(self.key), "-p", str(self.port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                "root@127.0.0.1"]

    def sh(self, script: str, check: bool = True, input: str | None = None,
           input_bytes: bytes | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """Run a shell script in the VM as root; raise on failure if check."""
        data = input_bytes if input_bytes is not None else (input.encode() if input else None)
        try:
            res = subprocess.run([*self.ssh_argv(), "bash", "-c", _quote(script)], input=data,
                                 capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            res = subprocess.CompletedProcess(exc.cmd, 124, b"", b"timed out")
        res = subprocess.CompletedProcess(res.args, res.returncode,
                                          res.stdout.decode(errors="replace"),
                                          res.stderr.decode(errors="replace"))
        return self.checked(res, script, check)

    def stop(self) -> None:
        """Power the VM off (or kill qemu) and delete its scratch files."""
        if self.proc and self.proc.poll() is None:
            self.sh("systemctl poweroff", check=False, timeout=20)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


def _quote(script: str) -> str:
    """One argument for the remote shell (ssh joins its arguments with spaces)."""
    return "'" + script.replace("'", "'\"'\"'") + "'"
