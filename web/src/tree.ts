// The builder's editable condition tree and its JSON form (the format /api/query/count takes).

export type Window = { mode: "all" } | { mode: "last"; days: number } | { mode: "range"; from: string; to: string };

export interface Filter {
  field: string;
  op: string;
  value: unknown;
}

export type Node =
  | { kind: "group"; not: boolean; op: "all" | "any"; children: Node[] }
  | { kind: "field"; not: boolean; field: string; op: string; value: unknown }
  | { kind: "event"; not: boolean; event: string; where: Filter[]; count: { op: string; value: number } | null; window: Window }
  | { kind: "orders"; not: boolean; what: "count" | "amount"; op: string; value: unknown; platform: string; window: Window }
  | { kind: "derived"; not: boolean; name: string }
  | { kind: "audience"; not: boolean; name: string };

export function group(op: "all" | "any" = "all", children: Node[] = []): Node {
  return { kind: "group", not: false, op, children };
}

function windowJson(w: Window): unknown {
  if (w.mode === "last") return { last_days: w.days };
  if (w.mode === "range") return { from: w.from, to: w.to };
  return undefined;
}

/** The condition tree JSON of `node`. */
export function toJson(node: Node): unknown {
  let out: Record<string, unknown>;
  switch (node.kind) {
    case "group":
      out = { [node.op]: node.children.map(toJson) };
      break;
    case "field":
      out = { field: node.field, op: node.op };
      if (!["is_null", "not_null"].includes(node.op)) out.value = node.value;
      break;
    case "event": {
      out = { event: node.event };
      if (node.where.length)
        out.where = node.where.map((f) => (["is_null", "not_null"].includes(f.op) ? { field: f.field, op: f.op } : f));
      if (node.count) out.count = node.count;
      const w = windowJson(node.window);
      if (w) out.window = w;
      break;
    }
    case "orders": {
      out = { orders: node.what, op: node.op, value: node.value };
      if (node.platform) out.platform = node.platform;
      const w = windowJson(node.window);
      if (w) out.window = w;
      break;
    }
    case "derived":
      out = { derived: node.name };
      break;
    case "audience":
      out = { audience: node.name };
      break;
  }
  return node.not ? { not: out } : out;
}

/** The set expression and the equivalent condition tree of packs folded left to right. */
export function composeSets(items: { op: "|" | "&" | "-"; name: string }[]): { expr: string; tree: unknown } {
  let expr = "";
  let tree: unknown = { any: [] };
  items.forEach((item, i) => {
    const leaf = { audience: item.name };
    if (i === 0) {
      expr = item.name;
      tree = leaf;
      return;
    }
    expr = `${i > 1 ? `(${expr})` : expr} ${item.op} ${item.name}`;
    if (item.op === "|") tree = { any: [tree, leaf] };
    else if (item.op === "&") tree = { all: [tree, leaf] };
    else tree = { all: [tree, { not: leaf }] };
  });
  return { expr, tree };
}
