// The visual condition builder: nested groups, field / event / order / derived / audience
// conditions, a live count, a preview of members and saving as a pack.

import { useEffect, useRef, useState } from "preact/hooks";
import { errorText, get, post } from "./api";
import { Field, Fields, Me, Table, ErrorLine, allowed, loadFields, useLoad } from "./common";
import { label, t, formatNumber } from "./i18n";
import { Filter, Node, Window, group, toJson } from "./tree";

const OPS: Record<string, string> = {
  eq: "=",
  ne: "≠",
  gt: ">",
  ge: "≥",
  lt: "<",
  le: "≤",
  between: "between",
  in: "in",
  not_in: "not in",
  contains: "contains",
  prefix: "starts with",
  is_null: "is empty",
  not_null: "has a value",
};
const NUMERIC = ["int", "float", "decimal"];
const TIME = ["time", "date"];

function defaultValue(f: Field | undefined, op: string): unknown {
  if (!f) return "";
  const many = op === "in" || op === "not_in";
  if (f.type === "bool") return true;
  if (f.type === "enum") return many ? [] : (f.values?.[0] ?? "");
  if (NUMERIC.includes(f.type)) return op === "between" ? [f.range?.[0] ?? 0, f.range?.[1] ?? 100] : many ? [] : 0;
  if (TIME.includes(f.type)) return op === "between" ? ["T-7", "T"] : "T";
  return many ? [] : "";
}

type Changed = () => void;

/** The value widget a field's type and operator call for. */
function ValueInput({ f, op, value, set, id }: { f: Field | undefined; op: string; value: unknown; set: (v: unknown) => void; id: string }) {
  if (!f || op === "is_null" || op === "not_null") return null;
  const many = op === "in" || op === "not_in";
  if (f.type === "bool")
    return (
      <label class="toggle">
        <input type="checkbox" checked={value === true} onChange={(e) => set((e.target as HTMLInputElement).checked)} />
        {value === true ? t("yes") : t("no")}
      </label>
    );
  if (f.type === "enum") {
    if (many) {
      const chosen = new Set((value as string[]) ?? []);
      return (
        <span class="choices" role="group" aria-label={t("values")}>
          {(f.values ?? []).map((v) => (
            <label>
              <input
                type="checkbox"
                checked={chosen.has(v)}
                onChange={(e) => {
                  const next = new Set(chosen);
                  if ((e.target as HTMLInputElement).checked) next.add(v);
                  else next.delete(v);
                  set((f.values ?? []).filter((x) => next.has(x)));
                }}
              />
              {v}
            </label>
          ))}
        </span>
      );
    }
    return (
      <select id={id} aria-label={t("value")} value={String(value)} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
        {(f.values ?? []).map((v) => (
          <option value={v}>{v}</option>
        ))}
      </select>
    );
  }
  if (NUMERIC.includes(f.type)) {
    const num = (s: string) => (s.trim() === "" ? null : Number(s));
    if (op === "between") {
      const [a, b] = (value as [number, number]) ?? [0, 0];
      return (
        <span class="pair">
          <input type="number" aria-label={t("from")} value={a ?? ""} onInput={(e) => set([num((e.target as HTMLInputElement).value), b])} />
          <span>–</span>
          <input type="number" aria-label={t("to")} value={b ?? ""} onInput={(e) => set([a, num((e.target as HTMLInputElement).value)])} />
        </span>
      );
    }
    if (many)
      return (
        <input
          aria-label={t("values, comma separated")}
          value={((value as number[]) ?? []).join(", ")}
          onChange={(e) =>
            set(
              (e.target as HTMLInputElement).value
                .split(",")
                .map((s) => s.trim())
                .filter(Boolean)
                .map(Number),
            )
          }
        />
      );
    return <input id={id} type="number" aria-label={t("value")} value={value as number} onInput={(e) => set(num((e.target as HTMLInputElement).value))} />;
  }
  if (TIME.includes(f.type)) return <TimeInput op={op} value={value} set={set} />;
  if (many)
    return (
      <input
        aria-label={t("values, comma separated")}
        value={((value as string[]) ?? []).join(", ")}
        onChange={(e) =>
          set(
            (e.target as HTMLInputElement).value
              .split(",")
              .map((s) => s.trim())
              .filter(Boolean),
          )
        }
      />
    );
  return <input id={id} aria-label={t("value")} value={value as string} onInput={(e) => set((e.target as HTMLInputElement).value)} />;
}

const isRelative = (v: unknown) => typeof v === "string" && /^T([+-]\d+)?$/.test(v);
const daysOf = (v: string) => (v === "T" ? 0 : -Number(v.slice(1)));
const rel = (n: number) => (n === 0 ? "T" : n > 0 ? `T-${n}` : `T+${-n}`);

/** Time values: a calendar range, or days relative to the evaluation date T. */
function TimeInput({ op, value, set }: { op: string; value: unknown; set: (v: unknown) => void }) {
  const values = op === "between" ? ((value as string[]) ?? ["T-7", "T"]) : [value as string];
  const relative = values.every(isRelative);
  const emit = (vs: string[]) => set(op === "between" ? vs : vs[0]);
  return (
    <span class="time">
      <select
        aria-label={t("time mode")}
        value={relative ? "relative" : "calendar"}
        onChange={(e) => {
          const today = new Date().toISOString().slice(0, 10);
          emit((e.target as HTMLSelectElement).value === "relative" ? values.map((_, i) => (i === 0 && op === "between" ? "T-7" : "T")) : values.map(() => today));
        }}
      >
        <option value="relative">{t("relative to T")}</option>
        <option value="calendar">{t("calendar")}</option>
      </select>
      {values.map((v, i) => (
        <>
          {i > 0 && <span>–</span>}
          {relative ? (
            <span class="rel">
              T −
              <input
                type="number"
                min="0"
                aria-label={i === 0 ? t("days before T (from)") : t("days before T (to)")}
                value={daysOf(v)}
                onInput={(e) => emit(values.map((x, j) => (j === i ? rel(Number((e.target as HTMLInputElement).value) || 0) : x)))}
              />
              {t("days")}
            </span>
          ) : (
            <input type="date" aria-label={i === 0 ? t("from") : t("to")} value={v} onInput={(e) => emit(values.map((x, j) => (j === i ? (e.target as HTMLInputElement).value : x)))} />
          )}
        </>
      ))}
    </span>
  );
}

function WindowInput({ w, set }: { w: Window; set: (w: Window) => void }) {
  return (
    <span class="window">
      <select
        aria-label={t("window")}
        value={w.mode}
        onChange={(e) => {
          const m = (e.target as HTMLSelectElement).value;
          set(m === "last" ? { mode: "last", days: 30 } : m === "range" ? { mode: "range", from: "T-30", to: "T" } : { mode: "all" });
        }}
      >
        <option value="last">{t("in the last")}</option>
        <option value="range">{t("between")}</option>
        <option value="all">{t("ever")}</option>
      </select>
      {w.mode === "last" && (
        <>
          <input type="number" min="1" aria-label={t("days")} value={w.days} onInput={(e) => set({ mode: "last", days: Number((e.target as HTMLInputElement).value) || 1 })} />
          {t("days")}
        </>
      )}
      {w.mode === "range" && (
        <>
          <input aria-label={t("from")} value={w.from} placeholder="T-30 / 2026-11-01" onInput={(e) => set({ ...w, from: (e.target as HTMLInputElement).value })} />
          <span>–</span>
          <input aria-label={t("to")} value={w.to} placeholder="T" onInput={(e) => set({ ...w, to: (e.target as HTMLInputElement).value })} />
        </>
      )}
    </span>
  );
}

function FieldSelect({ fields, value, set, tables, label: aria }: { fields: Field[]; value: string; set: (f: string) => void; tables: string[]; label: string }) {
  return (
    <select aria-label={aria} value={value} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
      {tables.map((table) => (
        <optgroup label={t("table " + table)}>
          {fields
            .filter((f) => f.table === table)
            .map((f) => (
              <option value={f.field}>
                {label(f)} ({f.field})
              </option>
            ))}
        </optgroup>
      ))}
    </select>
  );
}

function OpSelect({ ops, value, set }: { ops: string[]; value: string; set: (op: string) => void }) {
  return (
    <select aria-label={t("operator")} value={value} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
      {ops.map((o) => (
        <option value={o}>{t(OPS[o] ?? o)}</option>
      ))}
    </select>
  );
}

let nextId = 0;

function Leaf({ node, ctx, changed, remove }: { node: Node; ctx: Ctx; changed: Changed; remove: () => void }) {
  const id = useRef(`c${nextId++}`).current;
  const byName = (name: string) => ctx.fields.fields.find((f) => f.field === name);
  let body;
  if (node.kind === "field") {
    const f = byName(node.field);
    body = (
      <>
        <FieldSelect
          label={t("field")}
          fields={ctx.fields.fields}
          tables={["users", "orders", "events"]}
          value={node.field}
          set={(name) => {
            const nf = byName(name);
            node.field = name;
            node.op = nf?.operators[0] ?? "eq";
            node.value = defaultValue(nf, node.op);
            changed();
          }}
        />
        <OpSelect
          ops={f?.operators ?? []}
          value={node.op}
          set={(op) => {
            node.op = op;
            node.value = defaultValue(f, op);
            changed();
          }}
        />
        <ValueInput f={f} op={node.op} id={id} value={node.value} set={(v) => ((node.value = v), changed())} />
      </>
    );
  } else if (node.kind === "event") {
    const eventFields = ctx.fields.fields.filter((f) => f.table === "events" && !["events.event_name", "events.event_time"].includes(f.field));
    body = (
      <>
        <span class="kind">{t("did event")}</span>
        <select aria-label={t("event")} value={node.event} onChange={(e) => ((node.event = (e.target as HTMLSelectElement).value), changed())}>
          {ctx.fields.events.map((e) => (
            <option value={e}>{t(e)}</option>
          ))}
        </select>
        <select
          aria-label={t("how often")}
          value={node.count ? `${node.count.op}` : "any"}
          onChange={(e) => {
            const v = (e.target as HTMLSelectElement).value;
            node.count = v === "any" ? null : v === "never" ? { op: "eq", value: 0 } : { op: v, value: node.count?.value || 2 };
            changed();
          }}
        >
          <option value="any">{t("at least once")}</option>
          <option value="never">{t("never")}</option>
          <option value="ge">{t("at least N times")}</option>
          <option value="le">{t("at most N times")}</option>
          <option value="eq">{t("exactly N times")}</option>
        </select>
        {node.count && !(node.count.op === "eq" && node.count.value === 0) && (
          <input type="number" min="0" aria-label={t("times")} value={node.count.value} onInput={(e) => ((node.count!.value = Number((e.target as HTMLInputElement).value) || 0), changed())} />
        )}
        <WindowInput w={node.window} set={(w) => ((node.window = w), changed())} />
        <div class="filters">
          {node.where.map((flt: Filter, i) => {
            const f = byName("events." + flt.field);
            return (
              <div class="filter">
                <span>{t("where")}</span>
                <FieldSelect
                  label={t("event property")}
                  fields={eventFields}
                  tables={["events"]}
                  value={"events." + flt.field}
                  set={(name) => {
                    const nf = byName(name);
                    flt.field = name.replace(/^events\./, "");
                    flt.op = nf?.operators[0] ?? "eq";
                    flt.value = defaultValue(nf, flt.op);
                    changed();
                  }}
                />
                <OpSelect ops={f?.operators ?? []} value={flt.op} set={(op) => ((flt.op = op), (flt.value = defaultValue(f, op)), changed())} />
                <ValueInput f={f} op={flt.op} id={`${id}w${i}`} value={flt.value} set={(v) => ((flt.value = v), changed())} />
                <button type="button" class="icon" aria-label={t("remove filter")} onClick={() => (node.where.splice(i, 1), changed())}>
                  ×
                </button>
              </div>
            );
          })}
          {eventFields.length > 0 && (
            <button
              type="button"
              class="link"
              onClick={() => {
                const f = eventFields[0];
                node.where.push({ field: f.field.replace(/^events\./, ""), op: f.operators[0], value: defaultValue(f, f.operators[0]) });
                changed();
              }}
            >
              + {t("property filter")}
            </button>
          )}
        </div>
      </>
    );
  } else if (node.kind === "orders") {
    body = (
      <>
        <span class="kind">{t("orders")}</span>
        <select aria-label={t("measure")} value={node.what} onChange={(e) => ((node.what = (e.target as HTMLSelectElement).value as "count" | "amount"), changed())}>
          <option value="count">{t("number of paid orders")}</option>
          <option value="amount">{t("amount paid, net of refunds")}</option>
        </select>
        <OpSelect ops={["ge", "gt", "eq", "le", "lt", "between"]} value={node.op} set={(op) => ((node.op = op), (node.value = op === "between" ? [1, 10] : 1), changed())} />
        <ValueInput f={{ type: "float" } as Field} op={node.op} id={id} value={node.value} set={(v) => ((node.value = v), changed())} />
        <select aria-label={t("platform")} value={node.platform} onChange={(e) => ((node.platform = (e.target as HTMLSelectElement).value), changed())}>
          <option value="">{t("any platform")}</option>
          {(ctx.fields.fields.find((f) => f.field === "orders.platform")?.values ?? ["youzan", "tmall"]).map((p) => (
            <option value={p}>{p}</option>
          ))}
        </select>
        <WindowInput w={node.window} set={(w) => ((node.window = w), changed())} />
      </>
    );
  } else if (node.kind === "derived") {
    body = (
      <>
        <span class="kind">{t("is a")}</span>
        <select aria-label={t("derived condition")} value={node.name} onChange={(e) => ((node.name = (e.target as HTMLSelectElement).value), changed())}>
          {ctx.fields.derived.map((d) => (
            <option value={d.name} title={d.description}>
              {label(d)}
            </option>
          ))}
        </select>
      </>
    );
  } else if (node.kind === "audience") {
    body = (
      <>
        <span class="kind">{t("is in audience")}</span>
        <select aria-label={t("audience")} value={node.name} onChange={(e) => ((node.name = (e.target as HTMLSelectElement).value), changed())}>
          {ctx.audiences.map((a) => (
            <option value={a}>{a}</option>
          ))}
        </select>
      </>
    );
  }
  return (
    <div class={"leaf " + node.kind} data-testid="condition">
      <NotToggle node={node} changed={changed} />
      {body}
      <button type="button" class="icon" aria-label={t("remove condition")} onClick={remove}>
        ×
      </button>
    </div>
  );
}

function NotToggle({ node, changed }: { node: Node; changed: Changed }) {
  return (
    <button type="button" class={"not" + (node.not ? " on" : "")} aria-pressed={node.not} title={t("negate")} onClick={() => ((node.not = !node.not), changed())}>
      {t("NOT")}
    </button>
  );
}

interface Ctx {
  fields: Fields;
  audiences: string[];
}

function GroupView({ node, ctx, changed, remove, depth }: { node: Node & { kind: "group" }; ctx: Ctx; changed: Changed; remove?: () => void; depth: number }) {
  const add = (child: Node) => {
    node.children.push(child);
    changed();
  };
  const firstUser = ctx.fields.fields.find((f) => f.table === "users" && f.indexed) ?? ctx.fields.fields[0];
  return (
    <fieldset class={"group depth" + (depth % 3)} data-testid="group">
      <legend>
        <NotToggle node={node} changed={changed} />
        <select aria-label={t("group joins with")} value={node.op} onChange={(e) => ((node.op = (e.target as HTMLSelectElement).value as "all" | "any"), changed())}>
          <option value="all">{t("ALL of (AND)")}</option>
          <option value="any">{t("ANY of (OR)")}</option>
        </select>
        {remove && (
          <button type="button" class="icon" aria-label={t("remove group")} onClick={remove}>
            ×
          </button>
        )}
      </legend>
      {node.children.map((child, i) =>
        child.kind === "group" ? (
          <GroupView node={child} ctx={ctx} changed={changed} depth={depth + 1} remove={() => (node.children.splice(i, 1), changed())} />
        ) : (
          <Leaf node={child} ctx={ctx} changed={changed} remove={() => (node.children.splice(i, 1), changed())} />
        ),
      )}
      <div class="adders">
        <button
          type="button"
          onClick={() => firstUser && add({ kind: "field", not: false, field: firstUser.field, op: firstUser.operators[0], value: defaultValue(firstUser, firstUser.operators[0]) })}
        >
          + {t("field")}
        </button>
        <button
          type="button"
          onClick={() => add({ kind: "event", not: false, event: ctx.fields.events.includes("purchase") ? "purchase" : ctx.fields.events[0], where: [], count: null, window: { mode: "last", days: 30 } })}
        >
          + {t("event")}
        </button>
        <button type="button" onClick={() => add({ kind: "orders", not: false, what: "count", op: "ge", value: 1, platform: "", window: { mode: "last", days: 90 } })}>
          + {t("orders")}
        </button>
        {ctx.fields.derived.length > 0 && (
          <button type="button" onClick={() => add({ kind: "derived", not: false, name: ctx.fields.derived[0].name })}>
            + {t("derived")}
          </button>
        )}
        {ctx.audiences.length > 0 && (
          <button type="button" onClick={() => add({ kind: "audience", not: false, name: ctx.audiences[0] })}>
            + {t("audience")}
          </button>
        )}
        <button type="button" onClick={() => add(group(node.op === "all" ? "any" : "all"))}>
          + {t("group")}
        </button>
      </div>
    </fieldset>
  );
}

interface CountAnswer {
  count: number;
  path: string;
  evaluated_at: string;
  elapsed_ms: number;
}

/** The live count: asked 350 ms after the last change; older answers are dropped. */
function useLiveCount(tree: unknown, key: number): [CountAnswer | null, string | null, boolean, number | null] {
  const [answer, setAnswer] = useState<CountAnswer | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [roundTrip, setRoundTrip] = useState<number | null>(null);
  const seq = useRef(0);
  useEffect(() => {
    const mine = ++seq.current;
    setBusy(true);
    const timer = setTimeout(async () => {
      const started = performance.now();
      try {
        const a = await post<CountAnswer>("/api/query/count", { conditions: tree });
        if (mine === seq.current) {
          setAnswer(a);
          setError(null);
          setRoundTrip(performance.now() - started);
        }
      } catch (e) {
        if (mine === seq.current) setError(errorText(e));
      } finally {
        if (mine === seq.current) setBusy(false);
      }
    }, 350);
    return () => clearTimeout(timer);
  }, [key]);
  return [answer, error, busy, roundTrip];
}

export function Builder({ me }: { me: Me }) {
  const [fields, fieldsError] = useLoad(loadFields);
  const [packs] = useLoad(() => get<{ audiences: { name: string }[] }>("/api/audiences"));
  const root = useRef<Node & { kind: "group" }>(group("all") as Node & { kind: "group" });
  const [version, setVersion] = useState(0);
  const changed = () => setVersion((v) => v + 1);
  const tree = toJson(root.current);
  const [answer, countError, busy, roundTrip] = useLiveCount(tree, version);
  const [preview, setPreview] = useState<{ columns: string[]; rows: Record<string, unknown>[] } | null>(null);
  const [previewError, setPreviewError] = useState<string | null>(null);
  const [columns, setColumns] = useState<string[] | null>(null);
  const [saving, setSaving] = useState(false);

  if (fieldsError) return <ErrorLine error={errorText(fieldsError)} />;
  if (!fields) return <p>{t("Loading…")}</p>;
  const ctx: Ctx = { fields, audiences: (packs?.audiences ?? []).map((a) => a.name) };
  const readable = fields.columns.filter((c) => c.read !== "denied");
  const chosen = columns ?? readable.map((c) => c.field).filter((c) => ["user_id", "gender", "age", "city", "phone", "member_level"].includes(c));

  async function runPreview() {
    try {
      setPreview(await post("/api/query/preview", { conditions: tree, columns: chosen.filter((c) => c !== "user_id"), limit: 20 }));
      setPreviewError(null);
    } catch (e) {
      setPreviewError(errorText(e));
    }
  }

  return (
    <div class="builder">
      <section class="tree" aria-label={t("Conditions")}>
        <h1>{t("Audience builder")}</h1>
        <GroupView node={root.current} ctx={ctx} changed={changed} depth={0} />
      </section>
      <aside class="estimate" aria-live="polite">
        <div class="size" data-testid="estimate">
          <span class="label">{t("Estimated size")}</span>
          <strong data-testid="count" data-count={answer && !countError ? answer.count : ""}>{answer && !countError ? formatNumber(answer.count) : "–"}</strong>
          <span class="unit">{t("people")}</span>
        </div>
        {busy && <p class="muted">{t("counting…")}</p>}
        {answer && !countError && (
          <p class="muted" data-testid="count-meta">
            {t("{ms} ms in the engine, {rt} ms round trip · {path} path · T = {date}", {
              ms: answer.elapsed_ms.toFixed(1),
              rt: (roundTrip ?? 0).toFixed(0),
              path: t(answer.path),
              date: answer.evaluated_at,
            })}
          </p>
        )}
        <ErrorLine error={countError} />
        <details>
          <summary>{t("Condition JSON")}</summary>
          <pre data-testid="tree-json">{JSON.stringify(tree, null, 2)}</pre>
        </details>
        <div class="actions">
          <button type="button" onClick={runPreview}>
            {t("Preview members")}
          </button>
          {allowed(me, "analyst") && (
            <button type="button" class="primary" onClick={() => setSaving(true)}>
              {t("Save as audience")}
            </button>
          )}
        </div>
        <details>
          <summary>{t("Preview columns")}</summary>
          <div class="choices">
            {readable.map((c) => (
              <label>
                <input
                  type="checkbox"
                  checked={chosen.includes(c.field)}
                  onChange={(e) => setColumns((e.target as HTMLInputElement).checked ? [...chosen, c.field] : chosen.filter((x) => x !== c.field))}
                />
                {label(c)} {c.read !== "clear" && <em class="mask">({t(c.read)})</em>}
              </label>
            ))}
          </div>
        </details>
      </aside>
      {(preview || previewError) && (
        <section class="preview" aria-label={t("Preview")}>
          <ErrorLine error={previewError} />
          {preview && <Table testId="preview" columns={preview.columns} rows={preview.rows} />}
        </section>
      )}
      {saving && <SaveDialog definition={{ conditions: tree }} timeZone={fields.time_zone} onClose={() => setSaving(false)} />}
    </div>
  );
}

interface ScheduleAnswer {
  description: string;
  next_runs: string[];
}

const PRESETS: [string, string][] = [
  ["0 3 * * *", "every day at 03:00"],
  ["0 * * * *", "every hour"],
  ["0 9 * * 1", "Mondays at 09:00"],
  ["0 0 1 * *", "the first of each month"],
];

/** Save a definition as a pack: once, or dynamic on a cron schedule with a readable preview. */
export function SaveDialog({ definition, timeZone, onClose }: { definition: Record<string, unknown>; timeZone: string; onClose: () => void }) {
  const [name, setName] = useState("");
  const [description, setDescription] = useState("");
  const [mode, setMode] = useState<"once" | "dynamic">("once");
  const [schedule, setSchedule] = useState("0 3 * * *");
  const [zone, setZone] = useState(timeZone || "UTC");
  const [preview, setPreview] = useState<ScheduleAnswer | null>(null);
  const [scheduleError, setScheduleError] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => ref.current?.showModal(), []);
  useEffect(() => {
    if (mode !== "dynamic") return;
    const timer = setTimeout(() => {
      get<ScheduleAnswer>(`/api/schedule?cron=${encodeURIComponent(schedule)}&time_zone=${encodeURIComponent(zone)}`).then(
        (a) => (setPreview(a), setScheduleError(null)),
        (e) => (setPreview(null), setScheduleError(errorText(e))),
      );
    }, 250);
    return () => clearTimeout(timer);
  }, [mode, schedule, zone]);

  async function save(e: Event) {
    e.preventDefault();
    setBusy(true);
    try {
      const body: Record<string, unknown> = { name, ...definition, mode };
      if (description) body.description = description;
      if (mode === "dynamic") Object.assign(body, { schedule, time_zone: zone });
      await post("/api/audiences", body);
      location.hash = "#/audiences/" + encodeURIComponent(name);
      onClose();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  return (
    <dialog ref={ref} onClose={onClose} aria-label={t("Save as audience")}>
      <form onSubmit={save} class="form">
        <h2>{t("Save as audience")}</h2>
        <label>
          {t("Name")}
          <input name="name" required pattern="[A-Za-z0-9_\-]+" value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          {t("Description")}
          <input name="description" value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
        </label>
        <fieldset class="radios">
          <legend>{t("Mode")}</legend>
          <label>
            <input type="radio" name="mode" checked={mode === "once"} onChange={() => setMode("once")} /> {t("once — computed now, frozen")}
          </label>
          <label>
            <input type="radio" name="mode" checked={mode === "dynamic"} onChange={() => setMode("dynamic")} /> {t("dynamic — refreshed on a schedule")}
          </label>
        </fieldset>
        {mode === "dynamic" && (
          <div class="cron">
            <label>
              {t("Schedule (cron: minute hour day month weekday)")}
              <input name="schedule" value={schedule} onInput={(e) => setSchedule((e.target as HTMLInputElement).value)} />
            </label>
            <div class="presets">
              {PRESETS.map(([c, text]) => (
                <button type="button" class="chip" onClick={() => setSchedule(c)}>
                  {t(text)}
                </button>
              ))}
            </div>
            <label>
              {t("Time zone")}
              <input name="time_zone" value={zone} onInput={(e) => setZone((e.target as HTMLInputElement).value)} />
            </label>
            <ErrorLine error={scheduleError} />
            {preview && (
              <div class="muted" data-testid="schedule-preview">
                <strong>{preview.description}</strong>
                <div>
                  {t("next runs")}: {preview.next_runs.slice(0, 3).join(" · ")}
                </div>
              </div>
            )}
          </div>
        )}
        <ErrorLine error={error} />
        <div class="actions">
          <button type="button" onClick={() => ref.current?.close()}>
            {t("Cancel")}
          </button>
          <button type="submit" class="primary" disabled={busy || !name}>
            {t("Save")}
          </button>
        </div>
      </form>
    </dialog>
  );
}
