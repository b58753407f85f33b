"""Drives Shoal's tracking API with Segment's own Python SDK, then reads the warehouse back
with the deltalake package (an independent Delta reader) to check every message landed once.

Usage: segment_sdk.py HOST WRITE_KEY EVENTS_TABLE_PATH
Prints one JSON object; exits non-zero when something is wrong.
"""

import json
import os
import sys

from deltalake import DeltaTable
from segment.analytics import Client

host, write_key, events_path = sys.argv[1], sys.argv[2], sys.argv[3]
errors = []
client = Client(
    write_key,
    host=host,
    on_error=lambda error, items: errors.append(repr(error)),
    gzip=True,
    max_retries=1,
    upload_size=50,
)

sent = []
for i in range(120):
    mid = f"sdk-track-{i}"
    client.track(
        user_id=f"login-{i % 7}",
        anonymous_id=f"device-{i % 11}",
        event="view_item",
        properties={"item_id": f"SKU-{i % 5}", "category": "净水器", "price": 99.5 + i},
        message_id=mid,
    )
    sent.append(mid)
client.identify(user_id="login-1", traits={"phone": "138 1234 5678", "gender": "female"}, message_id="sdk-identify")
client.page(user_id="login-1", name="首页", properties={"path": "/"}, message_id="sdk-page")
client.alias(previous_id="device-3", user_id="login-3", message_id="sdk-alias")
client.screen(user_id="login-2", name="Cart", message_id="sdk-screen")
client.group(user_id="login-2", group_id="shop-1", traits={"name": "Shoal"}, message_id="sdk-group")
# A retry of an already-sent message must not double it.
client.track(user_id="login-0", event="view_item", message_id="sdk-track-0")
sent += ["sdk-identify", "sdk-page", "sdk-alias", "sdk-screen", "sdk-group"]
client.flush()
client.join()

table = DeltaTable(events_path).to_pyarrow_table(columns=["event_id", "event_name", "event_type", "properties"])
ids = table.column("event_id").to_pylist()
ours = [i for i in ids if i.startswith("sdk-")]
identify = [p for i, p in zip(ids, table.column("properties").to_pylist()) if i == "sdk-identify"]
result = {
    "errors": errors,
    "sent": len(sent),
    "landed": len(ours),
    "distinct": len(set(ours)),
    "missing": sorted(set(sent) - set(ours)),
    "identify_phone": json.loads(identify[0]).get("phone") if identify else None,
    "types": sorted(set(table.column("event_type").to_pylist())),
}
print(json.dumps(result))
ok = not errors and result["landed"] == result["distinct"] == len(sent) and not result["missing"]
sys.stdout.flush()
# Skip interpreter teardown: native readers' background threads can abort it after the work
# is done and reported.
os._exit(0 if ok else 1)
