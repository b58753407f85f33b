"""Drives Shoal's Postgres endpoint with psycopg: extended protocol with parameters,
prepared statements, the simple protocol, catalog lookups and refused writes.

Usage: postgres_client.py HOST PORT TOKEN. Prints one JSON object of what it saw."""

import json
import sys

import psycopg

host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = {}
with psycopg.connect(host=host, port=port, user="bi", password=token, dbname="shoal",
                     autocommit=True) as conn:
    # Extended protocol with a bound parameter.
    rows = conn.execute(
        "SELECT login_id, age FROM users WHERE age > %s ORDER BY login_id", (25,)).fetchall()
    seen["older_than_25"] = [[r[0], r[1]] for r in rows]
    # The same statement prepared on the server and run twice with other values.
    with conn.cursor() as cur:
        runs = []
        for age in (20, 35):
            cur.execute("SELECT count(*) FROM users WHERE age > %s", (age,), prepare=True)
            runs.append(cur.fetchone()[0])
        seen["prepared_counts"] = runs
    # Masked columns come masked whatever the protocol.
    seen["phones"] = [r[0] for r in conn.execute(
        "SELECT phone FROM users WHERE phone IS NOT NULL ORDER BY phone").fetchall()]
    # The simple query protocol (client-side binding).
    with psycopg.ClientCursor(conn) as cur:
        cur.execute("SELECT gender, count(*) AS n FROM users GROUP BY gender ORDER BY gender")
        seen["simple"] = [[r[0], r[1]] for r in cur.fetchall()]
    # What BI tools ask on connect.
    seen["tables"] = sorted(r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall())
    seen["pg_class_has_users"] = bool(conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class WHERE relname = 'users'").fetchone()[0])
    # Writes are refused, through both protocols.
    errors = []
    for statement in ["INSERT INTO users (user_id) VALUES (99)", "DELETE FROM users",
                      "CREATE TABLE x (a INT)"]:
        try:
            conn.execute(statement)
            errors.append(None)
        except psycopg.Error as e:
            errors.append(str(e))
    seen["write_errors"] = errors
    seen["still_three"] = conn.execute("SELECT count(*) FROM users").fetchone()[0]
print(json.dumps(seen))
