"""Box tier: a real booted systemd machine with bootstrap run in it once."""

import os

import pytest

from machine import Box, build_image

# Two real apps, one per runtime, each answering with its site, runtime and port.
NODE_APP = """\
const http = require("http");
http.createServer((req, res) => {
  res.end(`${process.env.SITE} node ${process.env.PORT} ${req.url}\\n`);
}).listen(Number(process.env.PORT), process.env.HOST);
"""

PYTHON_APP = """\
import http.server, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.environ['SITE']} python {os.environ['PORT']} {self.path}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture(scope="session")
def image():
    if os.geteuid() != 0:
        pytest.fail("box tests need root (systemd-nspawn, mount)")
    return build_image()


@pytest.fixture(scope="module")
def box(image):
    machine = Box(image)
    try:
        machine.start()
        yield machine
    finally:
        machine.stop()


def install_release(box: Box, site: str, files: dict[str, str], release="20260101T000000Z"):
    """Put a release in place by hand (deploy's job later) and point current at it."""
    root = f"/srv/sites/{site}"
    box.sh(f"install -d -o {site} -g {site} {root}/releases/{release}")
    for name, text in files.items():
        box.sh(f"cat > {root}/releases/{release}/{name} && chown {site}: {root}/releases/{release}/{name}",
               input=text)
    box.sh(f"ln -sfn releases/{release} {root}/current")
