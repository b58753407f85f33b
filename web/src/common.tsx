// Small pieces every page uses.

import { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { get } from "./api";

export interface Me {
  token_id: string;
  name: string;
  role: "viewer" | "analyst" | "admin";
}

export interface Field {
  field: string;
  table: string;
  zh: string;
  en: string;
  type: string;
  operators: string[];
  values?: string[];
  range?: [number, number];
  sensitivity: string;
  description?: string;
  indexed: boolean;
}

export interface Column {
  field: string;
  zh: string;
  en: string;
  type: string;
  read: string;
  export: string;
}

export interface Fields {
  fields: Field[];
  derived: { name: string; zh: string; en: string; description?: string }[];
  events: string[];
  time_zone: string;
  columns: Column[];
}

let fieldsCache: Promise<Fields> | null = null;
/** `/api/catalog/fields`, asked once per page load. */
export function loadFields(): Promise<Fields> {
  if (!fieldsCache) fieldsCache = get<Fields>("/api/catalog/fields");
  fieldsCache.catch(() => (fieldsCache = null));
  return fieldsCache;
}

/** Resolves `load` once and whenever `deps` change; gives [value, error, reload]. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []): [T | undefined, unknown, () => void] {
  const [value, setValue] = useState<T | undefined>();
  const [error, setError] = useState<unknown>();
  const [n, setN] = useState(0);
  useEffect(() => {
    let live = true;
    load().then(
      (v) => live && (setValue(v), setError(undefined)),
      (e) => live && setError(e),
    );
    return () => {
      live = false;
    };
  }, [...deps, n]);
  return [value, error, () => setN((x) => x + 1)];
}

/** A modal dialog (the native <dialog>, so Escape closes it and focus stays inside). */
export function Dialog({ title, onClose, children }: { title: string; onClose: () => void; children: ComponentChildren }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    ref.current?.showModal();
  }, []);
  return (
    <dialog ref={ref} onClose={onClose} aria-label={title}>
      <h2>{title}</h2>
      {children}
    </dialog>
  );
}

export function ErrorLine({ error }: { error: string | null | undefined }) {
  return error ? (
    <p class="error" role="alert">
      {error}
    </p>
  ) : null;
}

/** A value as a table cell shows it. */
export function cell(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function Table({ columns, rows, testId }: { columns: string[]; rows: Record<string, unknown>[]; testId?: string }) {
  return (
    <div class="grid-wrap">
      <table class="grid" data-testid={testId}>
        <thead>
          <tr>
            {columns.map((c) => (
              <th>{c}</th>
            ))}
          </tr>
        </thead>
        <tbody>
          {rows.map((r) => (
            <tr>
              {columns.map((c) => (
                <td>{cell(r[c])}</td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

const RANK = { viewer: 0, analyst: 1, admin: 2 };
/** Whether `me`'s role is at least `min`. */
export function allowed(me: Me, min: Me["role"]) {
  return RANK[me.role] >= RANK[min];
}
