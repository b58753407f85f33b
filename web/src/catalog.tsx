// The catalog: tables and their field standards, owners and sensitivity, and the quality
// monitors' status.

import { useState } from "preact/hooks";
import { errorText, get } from "./api";
import { ErrorLine, Me, useLoad } from "./common";
import { label, t } from "./i18n";

interface FieldDef {
  name: string;
  zh: string;
  en: string;
  type: string;
  required: boolean;
  range?: [number, number];
  values?: string[];
  owner: string;
  sensitivity: string;
  description: string;
}

interface TableDef {
  name: string;
  zh: string;
  en: string;
  description: string;
  fields: FieldDef[];
}

interface Monitor {
  table: string;
  field: string | null;
  monitor: string;
  status: string;
  value: string;
  threshold: string;
}

export function CatalogPage({ me: _me }: { me: Me }) {
  const [catalog, error] = useLoad(() => get<{ definition: { tables: TableDef[] }; revision: number }>("/api/catalog"));
  const [check, checkError] = useLoad(() => get<{ monitors: Monitor[] }>("/api/catalog/check"));
  const [table, setTable] = useState("users");
  const [onlyProblems, setOnlyProblems] = useState(true);
  if (error) return <ErrorLine error={errorText(error)} />;
  if (!catalog) return <p>{t("Loading…")}</p>;
  const tables = catalog.definition.tables;
  const current = tables.find((x) => x.name === table) ?? tables[0];
  const monitors = (check?.monitors ?? []).filter((m) => !onlyProblems || m.status !== "OK");
  const counts = (check?.monitors ?? []).reduce<Record<string, number>>((acc, m) => ((acc[m.status] = (acc[m.status] ?? 0) + 1), acc), {});
  return (
    <div class="catalog">
      <h1>
        {t("Catalog")} <small class="muted">{t("revision {n}", { n: catalog.revision })}</small>
      </h1>
      <section aria-label={t("Quality monitors")}>
        <h2>{t("Quality monitors")}</h2>
        <ErrorLine error={checkError ? errorText(checkError) : null} />
        <p data-testid="monitor-summary">
          {["OK", "WARN", "FAIL"].map((s) => (
            <span class={"status " + s.toLowerCase()}>
              {t(s)} {counts[s] ?? 0}
            </span>
          ))}
          <label class="check">
            <input type="checkbox" checked={onlyProblems} onChange={(e) => setOnlyProblems((e.target as HTMLInputElement).checked)} />
            {t("only warnings and failures")}
          </label>
        </p>
        <div class="grid-wrap">
          <table class="grid">
            <thead>
              <tr>
                <th>{t("Table")}</th>
                <th>{t("Field")}</th>
                <th>{t("Monitor")}</th>
                <th>{t("Status")}</th>
                <th>{t("Value")}</th>
                <th>{t("Threshold")}</th>
              </tr>
            </thead>
            <tbody>
              {monitors.map((m) => (
                <tr>
                  <td>{m.table}</td>
                  <td>{m.field ?? ""}</td>
                  <td>{t(m.monitor)}</td>
                  <td>
                    <span class={"status " + m.status.toLowerCase()}>{t(m.status)}</span>
                  </td>
                  <td>{m.value}</td>
                  <td>{m.threshold}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
      <section aria-label={t("Fields")}>
        <h2>{t("Fields")}</h2>
        <nav class="tabs" aria-label={t("Tables")}>
          {tables.map((x) => (
            <button type="button" class={x.name === current.name ? "on" : ""} aria-pressed={x.name === current.name} onClick={() => setTable(x.name)}>
              {label(x)} <small>{x.name}</small>
            </button>
          ))}
        </nav>
        {current.description && <p class="muted">{current.description}</p>}
        <div class="grid-wrap">
          <table class="grid" data-testid="catalog-fields">
            <thead>
              <tr>
                <th>{t("Field")}</th>
                <th>{t("Display name")}</th>
                <th>{t("Type")}</th>
                <th>{t("Standard")}</th>
                <th>{t("Owner")}</th>
                <th>{t("Sensitivity")}</th>
                <th>{t("Description")}</th>
              </tr>
            </thead>
            <tbody>
              {current.fields.map((f) => (
                <tr>
                  <td>
                    <code>{f.name}</code>
                  </td>
                  <td>{label(f)}</td>
                  <td>{f.type}</td>
                  <td>
                    {f.required && <span class="tag">{t("required")}</span>}
                    {f.range && ` ${f.range[0]} – ${f.range[1]}`}
                    {f.values && ` ${f.values.join(" | ")}`}
                  </td>
                  <td>{f.owner}</td>
                  <td>
                    <span class={"sens " + f.sensitivity}>{t(f.sensitivity)}</span>
                  </td>
                  <td>{f.description}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </section>
    </div>
  );
}
