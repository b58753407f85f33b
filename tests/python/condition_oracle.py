"""Counts condition trees with DuckDB, as an independent oracle for Shoal's counts.

Reads the warehouse's Delta tables with the `deltalake` package (the same Parquet files
Shoal reads), and translates each tree into DuckDB SQL with its own rules:

- a condition is a set of users of `users`; `not` is the complement within all users;
- a field test on a null value is false (only is_null matches nulls);
- an event or order condition compares a per-user count (or sum) with a correlated
  subquery, so users without rows count zero.

usage: condition_oracle.py WAREHOUSE TREES.json EVALUATION_DATE  -> JSON list of counts
"""

import datetime
import json
import sys

import duckdb
from deltalake import DeltaTable

PAID = "('paid', 'shipped', 'completed', 'refunded')"
OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def quote(text):
    return "'" + str(text).replace("'", "''") + "'"


def value(v):
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, (int, float)):
        return repr(v)
    return quote(v)


def day(point, today):
    if point == "T":
        return today
    if point.startswith("T"):
        return today + datetime.timedelta(days=int(point[1:]))
    return datetime.date.fromisoformat(point)


def window(w, column, today):
    if w is None:
        return "TRUE"
    if "last_days" in w:
        first = today - datetime.timedelta(days=w["last_days"] - 1)
        return f"{column} BETWEEN DATE '{first}' AND DATE '{today}'"
    parts = []
    if "from" in w:
        parts.append(f"{column} >= DATE '{day(w['from'], today)}'")
    if "to" in w:
        parts.append(f"{column} <= DATE '{day(w['to'], today)}'")
    return " AND ".join(parts) or "TRUE"


def field(f, alias):
    column = f"{alias}.{f['field']}"
    op = f["op"]
    v = f.get("value")
    if op == "is_null":
        return f"{column} IS NULL"
    if op == "not_null":
        return f"{column} IS NOT NULL"
    if op in ("in", "not_in"):
        listed = ", ".join(value(x) for x in v)
        test = f"{column} {'NOT ' if op == 'not_in' else ''}IN ({listed})"
    elif op == "between":
        test = f"{column} BETWEEN {value(v[0])} AND {value(v[1])}"
    elif op == "contains":
        test = f"strpos({column}, {quote(v)}) > 0"
    elif op == "prefix":
        test = f"starts_with({column}, {quote(v)})"
    else:
        test = f"{column} {OPS[op]} {value(v)}"
    return f"COALESCE({test}, FALSE)"


def translate(node, today):
    if "all" in node:
        return "(" + " AND ".join([translate(c, today) for c in node["all"]] or ["TRUE"]) + ")"
    if "any" in node:
        return "(" + " OR ".join([translate(c, today) for c in node["any"]] or ["FALSE"]) + ")"
    if "not" in node:
        return f"(NOT {translate(node['not'], today)})"
    if "field" in node:
        return field(node, "u")
    if "event" in node:
        filters = [f"e.event_name = {quote(node['event'])}", window(node.get("window"), "e.event_date", today)]
        filters += [field(f, "e") for f in node.get("where", [])]
        count = node.get("count", {"op": "ge", "value": 1})
        n = f"(SELECT count(*) FROM events e WHERE e.user_id = u.user_id AND {' AND '.join(filters)})"
        return f"({n} {OPS[count['op']]} {count['value']})"
    if "orders" in node:
        filters = [f"o.status IN {PAID}"]
        if "platform" in node:
            platforms = node["platform"] if isinstance(node["platform"], list) else [node["platform"]]
            filters.append("o.platform IN (" + ", ".join(quote(p) for p in platforms) + ")")
        if "window" in node:
            filters.append(window(node["window"], "CAST(o.created_at AT TIME ZONE 'Asia/Shanghai' AS DATE)", today))
        measure = "count(*)" if node["orders"] == "count" else "sum(o.amount - COALESCE(o.refund_amount, 0))"
        n = f"COALESCE((SELECT {measure} FROM orders o WHERE o.user_id = u.user_id AND {' AND '.join(filters)}), 0)"
        return f"({n} {OPS[node['op']]} {value(node['value'])})"
    raise ValueError(f"the oracle does not know {node}")


def main():
    warehouse, trees_file, today = sys.argv[1], sys.argv[2], datetime.date.fromisoformat(sys.argv[3])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name in ("users", "events", "orders"):
        arrow_table = DeltaTable(f"{warehouse}/{name}").to_pyarrow_table()
        con.register(name, arrow_table)
    trees = json.load(open(trees_file, encoding="utf-8"))
    counts = []
    for tree in trees:
        sql = f"SELECT count(*) FROM users u WHERE {translate(tree, today)}"
        counts.append(con.execute(sql).fetchone()[0])
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
