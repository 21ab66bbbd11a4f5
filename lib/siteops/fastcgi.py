"""A FastCGI client for one request: how siteops health-checks a PHP site's
FPM instance on its own port before nginx is sent there (the way nginx will
ask it: SCRIPT_FILENAME in the release's web root, the site's Host).

The protocol (fastcgi-spec, "FastCGI Specification" 1.0): records of an
8-byte header (version 1, type, request id, content length, padding) and a
body. A request is BEGIN_REQUEST (role RESPONDER), PARAMS (name-value pairs,
ended by an empty record), STDIN (empty: a GET); the answer is STDOUT records
(CGI headers, a blank line, the body), STDERR, then END_REQUEST."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
RESPONDER = 1
HEADER = struct.Struct(">BBHHBx")
REQUEST_ID = 1


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    stderr: str


def record(kind: int, body: bytes = b"") -> bytes:
    return HEADER.pack(1, kind, REQUEST_ID, len(body), 0) + body


def _length(n: int) -> bytes:
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)


def pairs(params: dict[str, str]) -> bytes:
    out = b""
    for name, value in params.items():
        n, v = name.encode(), value.encode()
        out += _length(len(n)) + _length(len(v)) + n + v
    return out


def request(params: dict[str, str]) -> bytes:
    """The bytes of one GET request with params."""
    body = pairs(params)
    chunks = [body[i:i + 65535] for i in range(0, len(body), 65535)]
    return (record(BEGIN_REQUEST, struct.pack(">HB5x", RESPONDER, 0))
            + b"".join(record(PARAMS, c) for c in chunks) + record(PARAMS) + record(STDIN))


def parse(data: bytes) -> Response:
    """The response in the records of data (up to END_REQUEST)."""
    out, err, pos = b"", b"", 0
    while pos + HEADER.size <= len(data):
        _, kind, _, length, padding = HEADER.unpack_from(data, pos)
        body = data[pos + HEADER.size:pos + HEADER.size + length]
        pos += HEADER.size + length + padding
        if kind == STDOUT:
            out += body
        elif kind == STDERR:
            err += body
        elif kind == END_REQUEST:
            break
    head, _, content = out.partition(b"\r\n\r\n")
    headers = {}
    for line in head.decode("latin-1").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    status = headers.get("status", "200").split()[0]
    return Response(int(status) if status.isdigit() else 502, headers, content,
                    err.decode(errors="replace"))


def get(port: int, script: str, uri: str, host: str, timeout: float = 10,
        document_root: str = "") -> Response:
    """GET uri from the FastCGI server on 127.0.0.1:port, running script."""
    path, _, query = uri.partition("?")
    params = {"GATEWAY_INTERFACE": "CGI/1.1", "SERVER_SOFTWARE": "siteops",
              "REQUEST_METHOD": "GET", "SCRIPT_FILENAME": script, "SCRIPT_NAME": "/index.php",
              "DOCUMENT_ROOT": document_root, "REQUEST_URI": uri, "DOCUMENT_URI": path,
              "QUERY_STRING": query, "SERVER_NAME": host, "HTTP_HOST": host,
              "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_ADDR": "127.0.0.1", "SERVER_PORT": "80",
              "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0", "HTTP_USER_AGENT": "siteops-health"}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request(params))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return parse(data)


def main(argv: list[str]) -> int:
    """fastcgi.py PORT SCRIPT URI HOST: print the status of GET URI (0: no answer)."""
    port, script, uri, host = argv
    try:
        print(get(int(port), script, uri, host, timeout=2).status)
    except OSError:
        print(0)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main(sys.argv[1:]))
