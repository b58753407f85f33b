// The SQL editor: read-only queries, a results grid, and "save as audience".

import { useState } from "preact/hooks";
import { errorText, post } from "./api";
import { ErrorLine, Me, Table, allowed, loadFields, useLoad } from "./common";
import { formatNumber, t } from "./i18n";
import { SaveDialog } from "./builder";

interface SqlAnswer {
  columns: { name: string; type: string }[];
  rows: Record<string, unknown>[];
  row_count: number;
  truncated: boolean;
  elapsed_ms: number;
}

export function SqlEditor({ me }: { me: Me }) {
  const [sql, setSql] = useState(localStorage.getItem("shoal.sql") ?? "SELECT gender, count(*) AS people\nFROM users\nGROUP BY gender\nORDER BY people DESC");
  const [answer, setAnswer] = useState<SqlAnswer | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [saving, setSaving] = useState(false);
  const [fields] = useLoad(loadFields);

  async function run() {
    setBusy(true);
    localStorage.setItem("shoal.sql", sql);
    try {
      setAnswer(await post<SqlAnswer>("/api/query/sql", { sql, format: "json", limit: 1000 }));
      setError(null);
    } catch (e) {
      setError(errorText(e));
      setAnswer(null);
    } finally {
      setBusy(false);
    }
  }
  const returnsUsers = answer?.columns.some((c) => c.name === "user_id");
  return (
    <div class="sql">
      <h1>{t("SQL")}</h1>
      <p class="muted">{t("Read-only: SELECT, WITH or EXPLAIN over every table at one snapshot, with rb_* functions and audience('name'). Ctrl+Enter runs.")}</p>
      <textarea
        aria-label={t("SQL query")}
        spellcheck={false}
        rows={8}
        value={sql}
        onInput={(e) => setSql((e.target as HTMLTextAreaElement).value)}
        onKeyDown={(e) => {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            run();
          }
        }}
      />
      <div class="actions">
        <button type="button" class="primary" onClick={run} disabled={busy}>
          {busy ? t("Running…") : t("Run")}
        </button>
        {allowed(me, "analyst") && (
          <button type="button" onClick={() => setSaving(true)} disabled={!returnsUsers} title={t("The query must return a user_id column.")}>
            {t("Save as audience")}
          </button>
        )}
        {answer && (
          <span class="muted" data-testid="sql-meta">
            {t("{rows} rows in {ms} ms", { rows: formatNumber(answer.row_count), ms: answer.elapsed_ms.toFixed(1) })}
            {answer.truncated && " · " + t("first 1,000 shown")}
          </span>
        )}
      </div>
      <ErrorLine error={error} />
      {answer && <Table testId="sql-results" columns={answer.columns.map((c) => c.name)} rows={answer.rows} />}
      {saving && <SaveDialog definition={{ sql }} timeZone={fields?.time_zone ?? "UTC"} onClose={() => setSaving(false)} />}
    </div>
  );
}
