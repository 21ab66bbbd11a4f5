"""The door of a sleeping site's instance: what NAME-door@PORT.service runs,
as the site's user, holding the door's listening socket from systemd (fd 3).

It waits until the instance its start woke answers on PORT, tells systemd
the door is open (READY=1: a deploy waits for it), then becomes
systemd-socket-proxyd (exec: the same process, the same socket), which
proxies every connection to the instance and exits once none has been open
for IDLE seconds; the instance, its workers and its Redis then stop, since
nothing needs them (StopWhenUnneeded). An instance that does not answer
within TIMEOUT seconds (a release that crashes on start): every connection
waiting at the door gets a 502 with the reason, and the door exits 1, so
audit reports it and the next request tries again.

    python3 -I door.py PORT IDLE TIMEOUT

Standard library only, and nothing of siteops imported: it runs as the
site's user, with only this file's directory readable to it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"
LISTEN_FD = 3  # SD_LISTEN_FDS_START
BODY = ("The site did not start ({why}); its owner can read why with `logs NAME` (the "
        "next request tries again).\n")


class Stopped(Exception):
    """systemd stops the door: its instance exited while starting (BindsTo=)."""


def wait_ready(port: int, timeout: float) -> bool:
    """True once something accepts connections on 127.0.0.1:port, False if
    nothing does within timeout seconds (polled every 10-100 ms)."""
    deadline, delay = time.monotonic() + timeout, 0.01
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def answer_waiting(listener: socket.socket, body: str) -> int:
    """Answer every connection waiting on listener with 502; return how many."""
    listener.setblocking(False)
    data = body.encode()
    response = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))
    answered = 0
    while True:
        try:
            conn, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return answered
        with conn:
            conn.settimeout(1)
            try:
                conn.recv(65536)  # the request: closing with it unread would reset
                conn.sendall(response)
            except OSError:
                pass
        answered += 1


def knock_once() -> socket.socket:
    """A connection to the door itself, closed by the exec: proxyd's idle timer
    starts when its last connection closes, so a door opened by a deploy,
    with no request, closes after the idle time too."""
    listener = socket.socket(fileno=LISTEN_FD)
    address = listener.getsockname()[:2]
    listener.detach()
    return socket.create_connection(address, timeout=1)  # close-on-exec


def notify_ready() -> None:
    """Tell systemd the door is open (Type=notify): the instance answers."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        s.connect(address)
        s.sendall(b"READY=1")


def main(argv: list[str]) -> int:
    if len(argv) != 4 or os.environ.get("LISTEN_FDS") != "1":
        print("door: run by a door's service, with its socket (see units.py)", file=sys.stderr)
        return 2
    port, idle, timeout = int(argv[1]), int(argv[2]), float(argv[3])
    started = time.monotonic()

    def stopped(signum, frame):
        raise Stopped()
    signal.signal(signal.SIGTERM, stopped)
    try:
        why = "" if wait_ready(port, timeout) else f"it did not answer within {timeout:g} s"
    except Stopped:
        why = "it exited while starting"
    if why:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # answering takes a moment
        listener = socket.socket(fileno=LISTEN_FD)
        answered = answer_waiting(listener, BODY.format(why=why))
        listener.detach()  # systemd's socket: it keeps listening for the next request
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} wake failed on port {port}: {why}; "
              f"{answered} request(s) answered 502", flush=True)
        return 1
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} wake: port {port} answered in "
          f"{time.monotonic() - started:.2f}s", flush=True)
    notify_ready()
    knock_once()
    os.execv(PROXYD, [PROXYD, f"--exit-idle-time={idle}s", f"127.0.0.1:{port}"])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
