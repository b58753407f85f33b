// Audience packs: the list with the set-algebra composer, and one pack's page with its history,
// upload, lookalike and export dialogs.

import { useEffect, useRef, useState } from "preact/hooks";
import { del, download, errorText, get, post, postRaw } from "./api";
import { ErrorLine, Me, Table, allowed, cell, loadFields, useLoad } from "./common";
import { formatNumber, label, t } from "./i18n";
import { composeSets } from "./tree";
import { Chart } from "./chart";

export interface Run {
  started_at: string;
  duration_ms: number;
  size: number | null;
  status: string;
  error: string | null;
  trigger: string;
  version: number | null;
}

export interface Pack {
  name: string;
  description: string | null;
  kind: string;
  mode: string;
  owner: string;
  schedule: string | null;
  time_zone: string | null;
  size: number | null;
  version: number | null;
  created_at: string;
  deleted_at: string | null;
  definition: Record<string, unknown>;
  last_run: Run | null;
  next_run: string | null;
}

interface Version {
  version: number;
  size: number;
  added: number;
  removed: number;
  created_at: string;
  evaluated_at: string;
  report: Record<string, any>;
  snapshot: Record<string, number>;
}

interface Detail extends Pack {
  versions: Version[];
  runs: Run[];
  schedule_description: string | null;
}

const when = (s: string | null | undefined) => (s ? s.replace("T", " ").slice(0, 19) + " UTC" : "–");

export function Audiences({ me }: { me: Me }) {
  const [list, error, reload] = useLoad(() => get<{ audiences: Pack[] }>("/api/audiences"));
  const [uploading, setUploading] = useState(false);
  return (
    <div class="audiences">
      <h1>{t("Audiences")}</h1>
      <ErrorLine error={error ? errorText(error) : null} />
      <div class="actions">
        <a class="button" href="#/builder">
          + {t("New from conditions")}
        </a>
        {allowed(me, "analyst") && (
          <a class="button" href="#/sql">
            + {t("New from SQL")}
          </a>
        )}
        {allowed(me, "analyst") && (
          <button type="button" onClick={() => setUploading(true)}>
            + {t("Upload a list")}
          </button>
        )}
      </div>
      {list && (
        <div class="grid-wrap">
          <table class="grid" data-testid="audiences">
            <thead>
              <tr>
                <th>{t("Name")}</th>
                <th>{t("Size")}</th>
                <th>{t("Made from")}</th>
                <th>{t("Mode")}</th>
                <th>{t("Last refresh")}</th>
                <th>{t("Status")}</th>
                <th>{t("Owner")}</th>
              </tr>
            </thead>
            <tbody>
              {list.audiences.map((p) => (
                <tr data-name={p.name}>
                  <td>
                    <a href={"#/audiences/" + encodeURIComponent(p.name)}>{p.name}</a>
                  </td>
                  <td class="num">{formatNumber(p.size)}</td>
                  <td>{t(p.kind)}</td>
                  <td>
                    {t(p.mode)} {p.schedule && <code>{p.schedule}</code>}
                  </td>
                  <td>{when(p.last_run?.started_at)}</td>
                  <td>
                    <span class={"status " + (p.last_run?.status ?? "none")}>{t(p.last_run?.status ?? "none")}</span>
                  </td>
                  <td>{p.owner}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {list.audiences.length === 0 && <p class="muted">{t("No audiences yet: build one from conditions or SQL.")}</p>}
        </div>
      )}
      {list && list.audiences.length > 0 && <Composer me={me} packs={list.audiences} onSaved={reload} />}
      {uploading && <UploadDialog onClose={() => setUploading(false)} onDone={reload} />}
    </div>
  );
}

type SetOp = "|" | "&" | "-";
const OP_SIGNS: Record<SetOp, string> = { "|": "∪", "&": "∩", "-": "−" };

/** Drag packs (or press them) into ∪ / ∩ / −; the size of the result updates live. */
function Composer({ me, packs, onSaved }: { me: Me; packs: Pack[]; onSaved: () => void }) {
  const [items, setItems] = useState<{ op: SetOp; name: string }[]>([]);
  const [op, setOp] = useState<SetOp>("|");
  const [count, setCount] = useState<number | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState("");
  const [saved, setSaved] = useState<string | null>(null);
  const { expr, tree } = composeSets(items);
  const seq = useRef(0);
  useEffect(() => {
    if (items.length === 0) return setCount(null);
    const mine = ++seq.current;
    post<{ count: number }>("/api/query/count", { conditions: tree }).then(
      (a) => mine === seq.current && (setCount(a.count), setError(null)),
      (e) => mine === seq.current && setError(errorText(e)),
    );
  }, [expr]);
  const add = (packName: string, dropOp?: SetOp) => setItems([...items, { op: dropOp ?? op, name: packName }]);

  async function save(e: Event) {
    e.preventDefault();
    try {
      await post("/api/audiences", { name, expr });
      setSaved(name);
      onSaved();
    } catch (err) {
      setError(errorText(err));
    }
  }
  return (
    <section class="composer" aria-label={t("Set algebra")}>
      <h2>{t("Combine audiences")}</h2>
      <p class="muted">{t("Drag packs into an operator, or choose an operator and press a pack.")}</p>
      <div class="chips" role="list">
        {packs
          .filter((p) => !p.deleted_at)
          .map((p) => (
            <button
              type="button"
              role="listitem"
              class="chip"
              draggable
              data-pack={p.name}
              onDragStart={(e) => e.dataTransfer?.setData("text/plain", p.name)}
              onClick={() => add(p.name)}
            >
              {p.name} <small>{formatNumber(p.size)}</small>
            </button>
          ))}
      </div>
      <div class="ops" role="group" aria-label={t("operator")}>
        {(Object.keys(OP_SIGNS) as SetOp[]).map((o) => (
          <div
            class={"drop" + (op === o ? " on" : "")}
            data-op={o}
            onDragOver={(e) => e.preventDefault()}
            onDrop={(e) => {
              e.preventDefault();
              const packName = e.dataTransfer?.getData("text/plain");
              if (packName) add(packName, o);
            }}
          >
            <button type="button" aria-pressed={op === o} onClick={() => setOp(o)}>
              {OP_SIGNS[o]}
            </button>
            <span>{t(o === "|" ? "union" : o === "&" ? "intersection" : "difference")}</span>
          </div>
        ))}
      </div>
      <div class="expression" data-testid="expression">
        {items.length === 0 ? (
          <span class="muted">{t("empty")}</span>
        ) : (
          items.map((it, i) => (
            <span class="term">
              {i > 0 && <b>{OP_SIGNS[it.op]}</b>}
              {it.name}
            </span>
          ))
        )}
        {items.length > 0 && (
          <button type="button" class="link" onClick={() => setItems([])}>
            {t("clear")}
          </button>
        )}
      </div>
      {items.length > 0 && (
        <p>
          <code data-testid="expr">{expr}</code> →{" "}
          <strong data-testid="composed-count" data-count={count ?? ""}>
            {formatNumber(count)}
          </strong>{" "}
          {t("people")}
        </p>
      )}
      <ErrorLine error={error} />
      {allowed(me, "analyst") && items.length > 0 && (
        <form class="inline" onSubmit={save}>
          <input aria-label={t("Name")} placeholder={t("name of the new pack")} required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          <button type="submit" class="primary">
            {t("Save as audience")}
          </button>
          {saved && (
            <a href={"#/audiences/" + encodeURIComponent(saved)} data-testid="saved-link">
              {t("saved: {name}", { name: saved })}
            </a>
          )}
        </form>
      )}
    </section>
  );
}

function UploadDialog({ onClose, onDone }: { onClose: () => void; onDone: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const [file, setFile] = useState<File | null>(null);
  const [name, setName] = useState("");
  const [idType, setIdType] = useState("auto");
  const [report, setReport] = useState<Record<string, any> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => ref.current?.showModal(), []);
  async function submit(e: Event) {
    e.preventDefault();
    if (!file) return;
    setBusy(true);
    try {
      const q = new URLSearchParams({ name, id_type: idType, filename: file.name });
      const answer = await postRaw<{ version: Version }>("/api/audiences/upload?" + q.toString(), file);
      setReport(answer.version.report);
      setError(null);
      onDone();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  return (
    <dialog ref={ref} onClose={onClose} aria-label={t("Upload a list")}>
      <form class="form" onSubmit={submit}>
        <h2>{t("Upload a list")}</h2>
        <p class="muted">{t("CSV or TXT of user ids, phones in any common form, SHA-256 hashed phones or login ids.")}</p>
        <label>
          {t("Name")}
          <input name="name" required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          {t("File")}
          <input name="file" type="file" accept=".csv,.txt,text/csv,text/plain" required onChange={(e) => setFile((e.target as HTMLInputElement).files?.[0] ?? null)} />
        </label>
        <label>
          {t("Identifiers")}
          <select value={idType} onChange={(e) => setIdType((e.target as HTMLSelectElement).value)}>
            <option value="auto">{t("decide per value")}</option>
            <option value="user_id">user_id</option>
            <option value="phone">{t("phone")}</option>
            <option value="phone_sha256">{t("SHA-256 of phone")}</option>
            <option value="login_id">login_id</option>
          </select>
        </label>
        <ErrorLine error={error} />
        {report && (
          <dl class="report" data-testid="match-report">
            {["rows", "matched", "unmatched", "invalid", "duplicates"].map((k) => (
              <>
                <dt>{t(k)}</dt>
                <dd data-key={k}>{formatNumber(report[k])}</dd>
              </>
            ))}
          </dl>
        )}
        <div class="actions">
          <button type="button" onClick={() => ref.current?.close()}>
            {report ? t("Close") : t("Cancel")}
          </button>
          {!report && (
            <button type="submit" class="primary" disabled={busy}>
              {t("Upload")}
            </button>
          )}
          {report && (
            <a class="button" href={"#/audiences/" + encodeURIComponent(name)} onClick={() => ref.current?.close()}>
              {t("Open")}
            </a>
          )}
        </div>
      </form>
    </dialog>
  );
}

export function AudienceDetail({ me, name }: { me: Me; name: string }) {
  const [pack, error, reload] = useLoad(() => get<Detail>("/api/audiences/" + encodeURIComponent(name)), [name]);
  const [dialog, setDialog] = useState<"lookalike" | "export" | null>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  if (error) return <ErrorLine error={errorText(error)} />;
  if (!pack) return <p>{t("Loading…")}</p>;
  const mayChange = allowed(me, "analyst");
  const mayDelete = me.role === "admin" || pack.owner === "token:" + me.token_id;

  async function act(f: () => Promise<unknown>) {
    setBusy(true);
    try {
      await f();
      setActionError(null);
      reload();
    } catch (e) {
      setActionError(errorText(e));
    } finally {
      setBusy(false);
    }
  }
  const path = "/api/audiences/" + encodeURIComponent(name);
  const versions = pack.versions;
  return (
    <div class="detail">
      <p>
        <a href="#/audiences">← {t("Audiences")}</a>
      </p>
      <h1>
        {pack.name} {pack.deleted_at && <span class="status failed">{t("deleted")}</span>}
      </h1>
      {pack.description && <p>{pack.description}</p>}
      <dl class="facts">
        <dt>{t("Size")}</dt>
        <dd data-testid="pack-size">{formatNumber(pack.size)}</dd>
        <dt>{t("Version")}</dt>
        <dd>{pack.version ?? "–"}</dd>
        <dt>{t("Mode")}</dt>
        <dd>
          {t(pack.mode)}
          {pack.schedule_description && ` · ${pack.schedule_description}`}
        </dd>
        <dt>{t("Next run")}</dt>
        <dd>{when(pack.next_run)}</dd>
        <dt>{t("Owner")}</dt>
        <dd>{pack.owner}</dd>
        <dt>{t("Made from")}</dt>
        <dd>{t(pack.kind)}</dd>
      </dl>
      <div class="actions">
        {mayChange && !pack.deleted_at && pack.kind !== "upload" && (
          <button type="button" disabled={busy} onClick={() => act(() => post(path + "/refresh"))}>
            {t("Refresh now")}
          </button>
        )}
        {mayChange && !pack.deleted_at && (
          <button type="button" onClick={() => setDialog("lookalike")}>
            {t("Lookalike…")}
          </button>
        )}
        <button type="button" onClick={() => setDialog("export")}>
          {t("Export…")}
        </button>
        {mayDelete && !pack.deleted_at && (
          <button type="button" class="danger" disabled={busy} onClick={() => confirm(t("Delete {name}? It can be restored.", { name })) && act(() => del(path))}>
            {t("Delete")}
          </button>
        )}
        {mayDelete && pack.deleted_at && (
          <button type="button" disabled={busy} onClick={() => act(() => post(path + "/restore"))}>
            {t("Restore")}
          </button>
        )}
      </div>
      <ErrorLine error={actionError} />
      <h2>{t("Definition")}</h2>
      <pre class="definition" data-testid="definition">
        {JSON.stringify(pack.definition, null, 2)}
      </pre>
      <h2>{t("Size over time")}</h2>
      <Chart
        label={t("Size over time")}
        option={{
          tooltip: { trigger: "axis" },
          legend: { data: [t("size"), t("added"), t("removed")] },
          grid: { left: 60, right: 20, top: 40, bottom: 30 },
          xAxis: { type: "category", data: versions.map((v) => `v${v.version} ${v.created_at.slice(5, 16).replace("T", " ")}`) },
          yAxis: { type: "value" },
          series: [
            { name: t("size"), type: "line", data: versions.map((v) => v.size) },
            { name: t("added"), type: "bar", data: versions.map((v) => v.added), itemStyle: { color: "#3a9d5d" } },
            { name: t("removed"), type: "bar", data: versions.map((v) => -v.removed), itemStyle: { color: "#c0504d" } },
          ],
        }}
      />
      <h2>{t("Versions")}</h2>
      <Table
        testId="versions"
        columns={[t("version"), t("size"), t("added"), t("removed"), t("evaluated at"), t("created")]}
        rows={[...versions].reverse().map((v) => ({
          [t("version")]: v.version,
          [t("size")]: formatNumber(v.size),
          [t("added")]: "+" + formatNumber(v.added),
          [t("removed")]: "−" + formatNumber(v.removed),
          [t("evaluated at")]: v.evaluated_at.slice(0, 10),
          [t("created")]: when(v.created_at),
        }))}
      />
      {versions.length >= 2 && <DiffPanel path={path} versions={versions} />}
      {versions.length > 0 && Object.keys(versions[versions.length - 1].report ?? {}).length > 0 && (
        <>
          <h2>{t("Report of the current version")}</h2>
          <pre class="definition" data-testid="version-report">
            {JSON.stringify(versions[versions.length - 1].report, null, 2)}
          </pre>
        </>
      )}
      <h2>{t("Runs")}</h2>
      <Table
        testId="runs"
        columns={[t("started"), t("trigger"), t("duration"), t("size"), t("status"), t("error")]}
        rows={[...pack.runs].reverse().map((r) => ({
          [t("started")]: when(r.started_at),
          [t("trigger")]: t(r.trigger),
          [t("duration")]: `${r.duration_ms.toFixed(0)} ms`,
          [t("size")]: formatNumber(r.size),
          [t("status")]: t(r.status),
          [t("error")]: r.error ?? "",
        }))}
      />
      {dialog === "lookalike" && <LookalikeDialog seed={name} onClose={() => setDialog(null)} />}
      {dialog === "export" && <ExportDialog me={me} path={path} onClose={() => setDialog(null)} />}
    </div>
  );
}

function DiffPanel({ path, versions }: { path: string; versions: Version[] }) {
  const last = versions[versions.length - 1].version;
  const [from, setFrom] = useState(last - 1);
  const [to, setTo] = useState(last);
  const [diff, setDiff] = useState<Record<string, any> | null>(null);
  const [error, setError] = useState<string | null>(null);
  async function compare(list?: string) {
    try {
      setDiff(await get(`${path}/diff?from=${from}&to=${to}${list ? `&list=${list}` : ""}`));
      setError(null);
    } catch (e) {
      setError(errorText(e));
    }
  }
  const pick = (v: number, set: (n: number) => void, aria: string) => (
    <select aria-label={aria} value={v} onChange={(e) => set(Number((e.target as HTMLSelectElement).value))}>
      {versions.map((x) => (
        <option value={x.version}>v{x.version}</option>
      ))}
    </select>
  );
  return (
    <section class="diff">
      <h2>{t("Who entered or left")}</h2>
      <div class="inline">
        {pick(from, setFrom, t("from version"))} → {pick(to, setTo, t("to version"))}
        <button type="button" onClick={() => compare()}>
          {t("Compare")}
        </button>
        <button type="button" onClick={() => compare("entered")}>
          {t("List who entered")}
        </button>
        <button type="button" onClick={() => compare("left")}>
          {t("List who left")}
        </button>
      </div>
      <ErrorLine error={error} />
      {diff && (
        <p data-testid="diff">
          {t("entered")} <b>{formatNumber(diff.entered)}</b> · {t("left")} <b>{formatNumber(diff.left)}</b> · {t("in both")} <b>{formatNumber(diff.both)}</b>
          {diff.users && <span class="ids">{(diff.users as number[]).slice(0, 200).join(", ")}</span>}
        </p>
      )}
    </section>
  );
}

function LookalikeDialog({ seed, onClose }: { seed: string; onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const [name, setName] = useState(seed + "_like");
  const [by, setBy] = useState<"size" | "percent">("percent");
  const [amount, setAmount] = useState(5);
  const [method, setMethod] = useState("logistic");
  const [report, setReport] = useState<Record<string, any> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => ref.current?.showModal(), []);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    try {
      const answer = await post<{ version: Version }>("/api/audiences", { name, lookalike: { seed, [by]: amount, method } });
      setReport(answer.version.report);
      setError(null);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  const holdout = report?.holdout;
  return (
    <dialog ref={ref} onClose={onClose} aria-label={t("Lookalike")}>
      <form class="form" onSubmit={submit}>
        <h2>{t("Lookalike of {seed}", { seed })}</h2>
        <label>
          {t("Name")}
          <input required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
        </label>
        <div class="inline">
          <select aria-label={t("expand by")} value={by} onChange={(e) => setBy((e.target as HTMLSelectElement).value as "size" | "percent")}>
            <option value="percent">{t("top % of everyone else")}</option>
            <option value="size">{t("number of people")}</option>
          </select>
          <input type="number" min="0" step="any" aria-label={t("amount")} value={amount} onInput={(e) => setAmount(Number((e.target as HTMLInputElement).value))} />
        </div>
        <label>
          {t("Method")}
          <select value={method} onChange={(e) => setMethod((e.target as HTMLSelectElement).value)}>
            <option value="logistic">{t("logistic regression")}</option>
            <option value="cosine">{t("cosine similarity to the seed's centroid")}</option>
          </select>
        </label>
        <ErrorLine error={error} />
        {report && (
          <div data-testid="lookalike-report">
            <p>
              {t("{size} people added; holdout check: {found} of {hidden} hidden seed members found, lift {lift}× over random.", {
                size: formatNumber(report.size),
                found: formatNumber(holdout?.found),
                hidden: formatNumber(holdout?.hidden),
                lift: holdout?.lift == null ? "–" : Number(holdout.lift).toFixed(1),
              })}
            </p>
            <p class="muted">
              {t("Strongest features")}: {(report.strongest ?? []).map((s: any) => `${s.feature} ${s.weight}`).join(", ")}
            </p>
          </div>
        )}
        <div class="actions">
          <button type="button" onClick={() => ref.current?.close()}>
            {report ? t("Close") : t("Cancel")}
          </button>
          {!report && (
            <button type="submit" class="primary" disabled={busy}>
              {busy ? t("Working…") : t("Create")}
            </button>
          )}
          {report && (
            <a class="button" href={"#/audiences/" + encodeURIComponent(name)} onClick={() => ref.current?.close()}>
              {t("Open")}
            </a>
          )}
        </div>
      </form>
    </dialog>
  );
}

function ExportDialog({ me, path, onClose }: { me: Me; path: string; onClose: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  const [fields] = useLoad(loadFields);
  const [chosen, setChosen] = useState<string[]>(["phone"]);
  const [format, setFormat] = useState("csv");
  const [sample, setSample] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => ref.current?.showModal(), []);
  const columns = (fields?.columns ?? []).filter((c) => c.export !== "denied" && c.field !== "user_id");
  async function run(e: Event) {
    e.preventDefault();
    try {
      const blob = await download(`${path}/export?columns=${encodeURIComponent(chosen.join(","))}&format=${format}`);
      const text = await blob.text();
      setSample(text.split("\n").slice(0, 6).join("\n"));
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = `${decodeURIComponent(path.split("/").pop() ?? "audience")}.${format}`;
      a.click();
      setError(null);
    } catch (err) {
      setError(errorText(err));
    }
  }
  return (
    <dialog ref={ref} onClose={onClose} aria-label={t("Export")}>
      <form class="form" onSubmit={run}>
        <h2>{t("Export members")}</h2>
        <p class="muted">{t("Columns are exported as your role ({role}) may: clear, masked or hashed (SHA-256 of the E.164 phone, uppercase hex). Every export is logged.", { role: t(me.role) })}</p>
        <div class="choices columns">
          {columns.map((c) => (
            <label data-column={c.field}>
              <input
                type="checkbox"
                checked={chosen.includes(c.field)}
                onChange={(e) => setChosen((e.target as HTMLInputElement).checked ? [...chosen, c.field] : chosen.filter((x) => x !== c.field))}
              />
              {label(c)} <em class={"mask " + c.export}>{t(c.export)}</em>
            </label>
          ))}
        </div>
        <label>
          {t("Format")}
          <select value={format} onChange={(e) => setFormat((e.target as HTMLSelectElement).value)}>
            <option value="csv">CSV</option>
            <option value="jsonl">{t("JSON lines")}</option>
          </select>
        </label>
        <ErrorLine error={error} />
        {sample !== null && (
          <pre class="definition" data-testid="export-sample">
            {cell(sample)}
          </pre>
        )}
        <div class="actions">
          <button type="button" onClick={() => ref.current?.close()}>
            {t("Close")}
          </button>
          <button type="submit" class="primary">
            {t("Download")}
          </button>
        </div>
      </form>
    </dialog>
  );
}
