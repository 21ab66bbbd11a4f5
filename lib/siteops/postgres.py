"""PostgreSQL: a loopback-only cluster with scram-sha-256, and per site a role
that can reach its own database only.

SQL goes to psql on stdin, never in argv. Passwords are sent as SCRAM
verifiers computed here, so the plain password never reaches the server or its
logs, and an existing role's password can be checked without changing it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import SiteopsError
from .host import Host
from .templates import render

CONNECTION_LIMIT = 20
SCRAM_ITERATIONS = 4096


@dataclass(frozen=True)
class Cluster:
    version: str
    name: str
    port: int
    online: bool

    @property
    def unit(self) -> str:
        return f"postgresql@{self.version}-{self.name}.service"

    def conf_dir(self, host: Host) -> Path:
        return host.paths.postgres_conf(self.version, self.name)


def scram_verifier(password: str, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for password (RFC 5803 form)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def verifier_matches(stored: str, password: str) -> bool:
    """True if a stored SCRAM verifier was made from password."""
    try:
        _method, params, _keys = stored.split("$", 2)
        iterations, salt = params.split(":", 1)
        expected = scram_verifier(password, base64.b64decode(salt), int(iterations))
    except (IndexError, ValueError):
        return False
    return hmac.compare_digest(expected, stored)


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def psql(host: Host, sql: str, db: str = "postgres", change: bool = False) -> str:
    """Run SQL as the postgres superuser; a change is recorded (and skipped in a dry run)."""
    argv = ["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-A", "-t",
            "-v", "ON_ERROR_STOP=1", "-d", db]
    if change:
        note = re.sub(r"PASSWORD '[^']*'", "PASSWORD '********'", sql)
        return host.run(argv, input=sql, note=note).out.strip()
    return host.query(argv, input=sql).out.strip()


def clusters(host: Host) -> list[Cluster]:
    """The clusters pg_lsclusters knows about."""
    out = host.query(["pg_lsclusters", "--no-header"]).out
    found = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4:
            found.append(Cluster(f[0], f[1], int(f[2]), f[3].startswith("online")))
    return found


def ensure_cluster(host: Host, major: int) -> Cluster:
    """The cluster sites use: created if the package left none, and running."""
    with host.step(f"postgresql {major} cluster"):
        found = clusters(host)
        if not found:
            host.run(["pg_createcluster", str(major), "main", "--start"])
            found = [Cluster(str(major), "main", 5432, True)]
        cluster = found[0]
        if not cluster.online:
            host.run(["systemctl", "start", cluster.unit])
    return cluster


def hba_errors_query() -> str:
    return "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL;"


def ensure_config(host: Host, cluster: Cluster) -> None:
    """Loopback only, scram-sha-256, and pg_hba letting a role into its own database only."""
    conf = cluster.conf_dir(host)
    with host.step("postgresql settings (localhost, scram-sha-256)"):
        if host.write(conf / "conf.d" / "siteops.conf", render("postgres/siteops.conf"),
                      0o644, "postgres", "postgres"):
            host.run(["systemctl", "restart", cluster.unit])
    with host.step("postgresql pg_hba (each role its own database)"):
        hba = conf / "pg_hba.conf"
        previous = host.snapshot(hba)
        if host.write(hba, render("postgres/pg_hba.conf"), 0o640, "postgres", "postgres"):
            # pg_hba_file_rules reads the file on disk: check it before the reload.
            if not host.dry_run and psql(host, hba_errors_query()) != "0":
                host.put_back(hba, previous)
                raise SiteopsError(f"{hba} has errors; previous file restored")
            host.run(["systemctl", "reload", cluster.unit])
    with host.step("postgresql CONNECT revoked from PUBLIC on shared databases"):
        for db in ("postgres", "template1"):
            if public_can_connect(host, db):
                psql(host, f'REVOKE CONNECT, TEMPORARY ON DATABASE "{db}" FROM PUBLIC;', change=True)


def grants_public(acl: str) -> bool:
    """True if an ACL text such as {owner=CTc/owner,=c/owner} has an entry for PUBLIC."""
    return any(item.startswith("=") for item in acl.strip("{}").split(","))


def public_can_connect(host: Host, db: str) -> bool:
    """True if PUBLIC has any privilege on database db (a NULL ACL means the defaults)."""
    acl = psql(host, f"SELECT coalesce(datacl::text, 'default') FROM pg_database "
                     f"WHERE datname = {quote_literal(db)};")
    return acl == "default" or grants_public(acl)


ROLE_COLUMNS = ("rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolconnlimit, "
                "coalesce(rolpassword, '')")


def role_facts(host: Host, name: str) -> dict | None:
    return parse_role(psql(host, f"SELECT {ROLE_COLUMNS} FROM pg_authid "
                                 f"WHERE rolname = {quote_literal(name)};"))


def parse_role(row: str) -> dict | None:
    """A role's attributes and verifier from its ROLE_COLUMNS row (empty: no role)."""
    if not row.strip("|"):
        return None
    login, sup, createdb, createrole, limit, password = row.split("|", 5)
    return {"attrs": (login, sup, createdb, createrole, int(limit)), "password": password}


def role_and_owner(host: Host, name: str) -> tuple[dict | None, str]:
    """The site's role (role_facts) and its database's owner ('' if none), in
    one psql session (each costs some 40 ms)."""
    row = psql(host, "SELECT coalesce((SELECT pg_get_userbyid(datdba) FROM pg_database "
                     f"WHERE datname = {quote_literal(name)}), ''), {ROLE_COLUMNS} FROM "
                     f"(SELECT 1) AS one LEFT JOIN pg_authid ON rolname = {quote_literal(name)};")
    owner, _, role = row.partition("|")
    return parse_role(role), owner


def verifiers(host: Host, roles: list[str]) -> dict[str, str]:
    """{role: its stored SCRAM verifier} for those of roles that have one (one
    query; the verifiers are for comparing, never for printing)."""
    if not roles:
        return {}
    names = ", ".join(quote_literal(r) for r in roles)
    out = psql(host, "SELECT coalesce(json_object_agg(rolname, rolpassword), '{}') FROM "
                     f"pg_authid WHERE rolname IN ({names}) AND rolpassword IS NOT NULL;")
    return json.loads(out or "{}")


ROLE_ATTRS = ("t", "f", "f", "f", CONNECTION_LIMIT)


def ensure_site_database(host: Host, name: str, password: str) -> None:
    """Role and database for a site, isolated from PUBLIC and from other sites."""
    attrs = (f"LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
             f"CONNECTION LIMIT {CONNECTION_LIMIT}")
    role, owner = role_and_owner(host, name)
    create_role = (f'CREATE ROLE "{name}" {attrs} PASSWORD '
                   f"{quote_literal(scram_verifier(password))};")
    create_db = f'CREATE DATABASE "{name}" OWNER "{name}" TEMPLATE template0 ENCODING \'UTF8\';'
    if role is None and not owner:  # a new site: one psql session (each is ~30 ms)
        with host.step(f"postgresql role and database {name}"):
            psql(host, f'{create_role}\n{create_db}\nREVOKE ALL ON DATABASE "{name}" FROM PUBLIC;\n'
                       f'\\connect "{name}"\nREVOKE ALL ON SCHEMA public FROM PUBLIC;\n',
                 change=True)
        return
    with host.step(f"postgresql role {name}"):
        if role is None:
            psql(host, create_role, change=True)
        else:
            if role["attrs"] != ROLE_ATTRS:
                psql(host, f'ALTER ROLE "{name}" {attrs};', change=True)
            if not verifier_matches(role["password"], password):
                psql(host, f'ALTER ROLE "{name}" PASSWORD '
                           f"{quote_literal(scram_verifier(password))};", change=True)
    with host.step(f"postgresql database {name}"):
        if not owner:
            psql(host, create_db, change=True)
        elif owner != name:
            raise SiteopsError(f"database {name} exists and belongs to {owner}, not the site; "
                               "refusing to take it over")
        if host.dry_run and not owner:
            return
        if public_can_connect(host, name):
            psql(host, f'REVOKE ALL ON DATABASE "{name}" FROM PUBLIC;', change=True)
        schema_acl = psql(host, "SELECT coalesce(nspacl::text, '') FROM pg_namespace "
                                "WHERE nspname = 'public';", db=name)
        if grants_public(schema_acl):
            psql(host, "REVOKE ALL ON SCHEMA public FROM PUBLIC;", db=name, change=True)


def drop_site_database(host: Host, name: str) -> None:
    """The site's database (its connections closed) and role."""
    with host.step(f"postgresql database and role {name} dropped"):
        if psql(host, f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(name)};"):
            psql(host, f'DROP DATABASE "{name}" WITH (FORCE);', change=True)
        if role_facts(host, name) is not None:
            psql(host, f'DROP ROLE "{name}";', change=True)


def disable_site_role(host: Host, name: str) -> None:
    """Keep the site's database and role, but let nobody log in as it."""
    with host.step(f"postgresql role {name} kept, login disabled"):
        role = role_facts(host, name)
        if role is not None and role["attrs"][0] == "t":
            psql(host, f'ALTER ROLE "{name}" NOLOGIN;', change=True)
