#!/usr/bin/env python3
"""Steady HTTP load through nginx, recording every request.

Sends --rate requests per second to http://127.0.0.1/ with a Host header from
--workers threads, each on its own keep-alive connection from its own source
address (127.0.0.2, .3, ...: nginx's per-client rate limit then applies per
worker, as it would to real visitors). Runs until --stop-file exists or
--duration passes, then writes every sample to --out as JSON:
[[unix time sent, latency seconds, status (0: no response), body head,
retried on a new connection after the server closed an idle keep-alive one], ...]

Used by the deploy box tests (zero failed requests during a switch) and by
bench/deploy.py.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import threading
import time


RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def connect(args, source: str) -> http.client.HTTPConnection:
    """A new connection from source: HTTP to 127.0.0.1:80, or with --https TLS
    to the site's name on 443 (it must resolve to this machine; certificates
    are not verified: the point is the server's behaviour, not the CA)."""
    if not args.https:
        return http.client.HTTPConnection("127.0.0.1", 80, timeout=10, source_address=(source, 0))
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return http.client.HTTPSConnection(args.host, 443, timeout=10, context=ctx,
                                       source_address=(source, 0))


def worker(index: int, args, t0: float, counter, samples: list, lock: threading.Lock) -> None:
    source = f"127.0.0.{index + 2}"
    conn = None
    while True:
        with lock:
            i = next(counter)
        due = t0 + i / args.rate
        now = time.monotonic()
        if now - t0 > args.duration or os.path.exists(args.stop_file):
            return
        if due > now:
            time.sleep(due - now)
        start, wall = time.monotonic(), time.time()
        status, head, retried = 0, "", False
        for attempt in (1, 2):
            reused = conn is not None
            try:
                if conn is None:
                    conn = connect(args, source)
                conn.request("GET", args.path, headers={"Host": args.host})
                resp = conn.getresponse()
                body = resp.read()
                status, head = resp.status, body[:80].decode(errors="replace")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as exc:
                head = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
                # A keep-alive connection the server closed while idle: every
                # HTTP client (browsers, urllib3) retries once on a new one.
                if not (reused and attempt == 1 and isinstance(exc, RETRYABLE)):
                    break
                retried = True
        samples.append((round(wall, 4), round(time.monotonic() - start, 5), status, head,
                        retried))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="Host header (the site's domain)")
    p.add_argument("--path", default="/")
    p.add_argument("--https", action="store_true",
                   help="TLS to HOST:443 (HOST must resolve to this machine)")
    p.add_argument("--rate", type=float, default=100, help="requests per second (default 100)")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--duration", type=float, default=600, help="seconds at most")
    p.add_argument("--stop-file", default="/tmp/load.stop")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    samples: list = []
    lock = threading.Lock()
    counter = iter(range(10**9))
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i, args, t0, counter, samples, lock))
               for i in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(args.out + ".tmp", "w") as fh:  # renamed whole: readers wait for it
        json.dump(sorted(samples), fh)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
