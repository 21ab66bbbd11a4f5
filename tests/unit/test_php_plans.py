"""The php runtime's logic: siteops.toml's php keys, detection, the FPM
command an instance runs, nginx's body size, the first php deploy's plan,
and the FastCGI client's bytes (the box tier proves it against real PHP-FPM)."""

import socket
import struct
import threading
from pathlib import Path

import pytest

from siteops import fastcgi, manifest, php
from siteops.paths import Paths

from fakes import make_host, planned_commands


def test_php_keys_are_read_and_checked():
    m = manifest.parse('runtime = "php"\nweb_root = "web/"\n[php]\nmemory_limit = "256M"\n'
                       'max_execution_time = 30\n')
    assert (m.runtime, m.web_root, m.php) == ("php", "web", {"memory_limit": "256M",
                                                              "max_execution_time": "30"})


@pytest.mark.parametrize("text, message", [
    ('[php]\ndisable_functions = ""\n', "not a setting a site may change"),
    ('[php]\nopen_basedir = "/"\n', "not a setting a site may change"),
    ('[php]\nmemory_limit = "-1"\n', "must be a size like 256M"),
    ('[php]\nmemory_limit = "1T"\n', "must be a size like 256M"),
    ('[php]\nmax_execution_time = true\n', "must be seconds"),
    ('php = "x"\n', "php must be a table"),
    ('web_root = "../etc"\n', "web_root must be a relative path"),
])
def test_unknown_or_unsafe_php_settings_are_refused(text, message):
    with pytest.raises(manifest.ManifestError, match=message):
        manifest.parse(text)


@pytest.mark.parametrize("files, runtime", [
    ({"composer.json", "public"}, "php"), ({"index.php"}, "php"),
    ({"package.json", "index.php"}, "node"), ({"README"}, "command")])
def test_php_is_detected_from_composer_json_or_index_php(files, runtime):
    assert manifest.detect_runtime(manifest.Manifest(), files) == runtime


def test_composer_installs_unless_vendor_is_committed():
    steps = manifest.build_steps(manifest.Manifest(), "php", {"composer.json"}, None, False)
    assert steps == [("install", "composer install --no-dev --optimize-autoloader "
                                 "--no-interaction --no-progress")]
    assert manifest.build_steps(manifest.Manifest(), "php", {"composer.json", "vendor"},
                                None, False) == []
    key = manifest.deps_key(manifest.Manifest(), "php", steps, {"composer.lock": "x"}, "8.2")
    assert key and key != manifest.deps_key(manifest.Manifest(), "php", steps,
                                            {"composer.lock": "y"}, "8.2")


def test_a_php_sites_front_is_its_fpm_and_a_start_for_it_is_refused():
    fpm = php.start_command("8.2", Paths().php_fpm_conf, {}, Paths().of("wiki").php_sessions)
    commands, skipped = manifest.start_commands(manifest.Manifest(runtime="php"), "php",
                                                ["frontend"], {}, {}, php_fpm=fpm)
    assert commands == {"frontend": fpm} and skipped == [] and php.is_fpm(fpm)
    with pytest.raises(manifest.ManifestError, match="is its PHP-FPM"):
        manifest.start_commands(manifest.Manifest(runtime="php", starts={"frontend": "x"}),
                                "php", ["frontend"], {}, {}, php_fpm=fpm)


def test_the_fpm_command_carries_the_release_settings_and_the_session_directory():
    command = php.start_command("8.4", Paths().php_fpm_conf, {"memory_limit": "96M"},
                                Paths().of("wiki").php_sessions)
    assert command == ("/usr/sbin/php-fpm8.4 --nodaemonize --force-stderr --fpm-config "
                       "/etc/siteops/php-fpm.conf -d session.save_path=/srv/sites/wiki/shared/"
                       "uploads/.sessions -d session.gc_probability=1 -d memory_limit=96M")


@pytest.mark.parametrize("settings, size", [
    ({}, "8M"), ({"upload_max_filesize": "20M"}, "20M"),
    ({"upload_max_filesize": "512K", "post_max_size": "1G"}, "1G"),
    ({"upload_max_filesize": "2G", "post_max_size": "100M"}, "2G")])
def test_nginx_takes_the_larger_of_the_upload_and_post_sizes(settings, size):
    assert php.body_size(settings) == size


def test_the_first_php_deploy_installs_php_and_turns_the_shared_pool_off(tmp_path):
    host, _ = make_host(tmp_path, [
        (["dpkg-query"], 1, "php-fpm not-installed\n"),
        (["php", "-r"], 0, "8.2"),
        (["systemctl", "is-enabled", "--quiet", "php8.2-fpm.service"], 0)], dry_run=True)
    assert php.ensure(host) == "8.2"
    assert planned_commands(host) == [
        "apt-get update -q",
        "apt-get install -y -q --no-install-recommends php-fpm php-cli php-pgsql php-redis "
        "composer",
        "systemctl disable --now --quiet php8.2-fpm.service"]
    assert any(a.kind == "write" and str(a.path).endswith("etc/siteops/php-fpm.conf")
               for a in host.actions)


def serve_once(reply: bytes) -> tuple[int, list]:
    """A one-connection FastCGI server on a free port: records what it got, sends reply."""
    server = socket.create_server(("127.0.0.1", 0))
    got = []

    def run():
        conn, _ = server.accept()
        data = b""
        while not data.endswith(fastcgi.record(fastcgi.STDIN)):
            data += conn.recv(65536)
        got.append(data)
        conn.sendall(reply)
        conn.close()
        server.close()
    threading.Thread(target=run, daemon=True).start()
    return server.getsockname()[1], got


def test_the_fastcgi_client_asks_as_nginx_would_and_reads_the_status():
    body = b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnot here"
    reply = (fastcgi.record(fastcgi.STDOUT, body) + fastcgi.record(fastcgi.STDERR, b"warned")
             + fastcgi.record(fastcgi.STDOUT) + fastcgi.record(fastcgi.END_REQUEST, bytes(8)))
    port, got = serve_once(reply)
    res = fastcgi.get(port, "/srv/sites/wiki/releases/R/public/index.php", "/healthz?x=1",
                      "wiki.test")
    assert (res.status, res.body, res.stderr) == (404, b"not here", "warned")
    request = got[0]
    assert request.startswith(fastcgi.record(fastcgi.BEGIN_REQUEST,
                                             struct.pack(">HB5x", fastcgi.RESPONDER, 0)))
    params = decoded_params(request)
    assert params["SCRIPT_FILENAME"] == "/srv/sites/wiki/releases/R/public/index.php"
    assert (params["REQUEST_URI"], params["DOCUMENT_URI"], params["QUERY_STRING"],
            params["HTTP_HOST"], params["REQUEST_METHOD"]) == (
        "/healthz?x=1", "/healthz", "x=1", "wiki.test", "GET")


def decoded_params(request: bytes) -> dict[str, str]:
    """The name-value pairs of a request's PARAMS records."""
    body, pos = b"", 0
    while pos < len(request):
        _, kind, _, length, padding = fastcgi.HEADER.unpack_from(request, pos)
        if kind == fastcgi.PARAMS:
            body += request[pos + 8:pos + 8 + length]
        pos += 8 + length + padding
    out, i = {}, 0

    def length_at(i):
        if body[i] < 128:
            return body[i], i + 1
        return struct.unpack(">I", body[i:i + 4])[0] & 0x7FFFFFFF, i + 4
    while i < len(body):
        n, i = length_at(i)
        v, i = length_at(i)
        out[body[i:i + n].decode()] = body[i + n:i + n + v].decode()
        i += n + v
    return out


def test_a_response_without_status_is_200_and_long_values_take_four_length_bytes():
    assert fastcgi.parse(fastcgi.record(fastcgi.STDOUT, b"Content-Type: x\r\n\r\nok")).status == 200
    encoded = fastcgi.pairs({"K": "v" * 200})
    assert encoded[:5] == bytes([1]) + struct.pack(">I", 200 | 0x80000000)


@pytest.mark.parametrize("path, script", [
    ("/", "index.php"), ("/healthz?x=1", "index.php"), ("/doku.php", "doku.php"),
    ("/lib/exe/ping.php?a=b", "lib/exe/ping.php")])
def test_the_health_check_runs_the_file_nginx_would(path, script):
    assert php.health_script(Path("/r/public"), path) == Path("/r/public") / script
