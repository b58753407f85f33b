"""Funnel counts from ClickHouse's own windowFunnel (chDB) over a warehouse's events table.

usage: funnel_chdb.py EVENTS_TABLE_DIR SPEC_JSON
SPEC_JSON: {"steps": [event names], "window_us": N, "modes": [...], "from": DAY, "to": DAY}
prints {"reached": [people per step]} as JSON.
"""

import json
import sys

import chdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable


def main():
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    steps = spec["steps"]
    events = DeltaTable(path).to_pyarrow_table(
        columns=["user_id", "event_name", "event_time", "event_date"]
    )
    # Rows at one instant go in step order, as Shoal orders them; ClickHouse keeps the
    # order rows arrive in, so feed them sorted, on one thread.
    rank = pa.array(
        [steps.index(n) if n in steps else len(steps) for n in events["event_name"].to_pylist()],
        type=pa.int32(),
    )
    events = events.append_column("step_rank", rank)
    events = events.filter(pc.is_valid(events["user_id"]))
    events = events.sort_by(
        [("user_id", "ascending"), ("event_time", "ascending"), ("step_rank", "ascending")]
    )
    events = events.set_column(
        events.schema.get_field_index("event_time"),
        "event_time",
        pc.cast(pc.cast(events["event_time"], pa.timestamp("us")), pa.int64()),
    )
    conditions = ", ".join("event_name = '%s'" % s for s in steps)
    modes = "".join(", '%s'" % m for m in spec.get("modes", []))
    only_steps = "" if "strict_order" in spec.get("modes", []) else (
        " AND event_name IN (%s)" % ", ".join("'%s'" % s for s in steps)
    )
    query = f"""
        SELECT level, count() AS people FROM (
            SELECT user_id,
                   windowFunnel({int(spec['window_us'])}{modes})(toUInt64(event_time), {conditions}) AS level
            FROM Python(events)
            WHERE event_date BETWEEN toDate('{spec['from']}') AND toDate('{spec['to']}'){only_steps}
            GROUP BY user_id
        ) GROUP BY level ORDER BY level
        SETTINGS max_threads = 1
    """
    rows = chdb.query(query, "JSONCompact")
    levels = json.loads(str(rows))["data"]
    reached = [0] * len(steps)
    for level, people in levels:
        for k in range(int(level)):
            reached[k] += int(people)
    print(json.dumps({"reached": reached}))


if __name__ == "__main__":
    main()
