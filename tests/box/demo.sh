#!/usr/bin/env bash
# The siteops demo, run as root inside a fresh machine: bootstrap, two sites
# (shop and blog), a small app deployed to each from a local git repository,
# then what a visitor sees, `sites list` and `audit`. Shared by tests/box/try
# (a booted Debian box) and the Vagrantfile (an Ubuntu VM); arguments go to
# bootstrap. SITEOPS_SRC: the checkout (default: the one this script is in).
set -euo pipefail
src=${SITEOPS_SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
say() { printf '\n==> %s\n' "$*"; }

say "bootstrap: the shared stack, hardened"
# Through sudo (as Vagrant provisions), a local repository must lie in a
# directory bootstrap was given: the demo's own.
mkdir -p /srv/demo
"$src/bin/bootstrap" --repo-dir /srv/demo "$@" | tail -n 1

for site in shop blog; do
    say "add-site $site, then deploy its app from /srv/demo/$site"
    "$src/bin/add-site" "$site" --domain "$site.test" --components frontend | tail -n 1
    repo=/srv/demo/$site
    mkdir -p "$repo"
    [ -d "$repo/.git" ] || git init -q -b main "$repo"
    cat > "$repo/app.py" <<PY
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"Hello from $site, release {os.environ['SITEOPS_RELEASE']}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Hello).serve_forever()
PY
    printf '[frontend]\nstart = "python3 app.py"\n' > "$repo/siteops.toml"
    git -C "$repo" add -A
    git -C "$repo" -c user.name=demo -c user.email=demo@localhost commit -q -m "demo app" || true
    "$src/bin/deploy" "$site" --repo "$repo" | tail -n 2
done

say "what a visitor sees (nginx, by Host header)"
for site in shop blog; do
    echo "\$ curl -H 'Host: $site.test' http://127.0.0.1/"
    curl -sS -H "Host: $site.test" http://127.0.0.1/
done

say "sites list"
"$src/bin/sites" list

say "audit (exit 1 = warnings only)"
"$src/bin/audit" | tail -n 15 || true
