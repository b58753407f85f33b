// UI text in English and Chinese. Keys are the English text; Chinese comes from the table.

import { zh } from "./zh";

export type Lang = "en" | "zh";
const LANG_KEY = "shoal.lang";

let current: Lang = (localStorage.getItem(LANG_KEY) as Lang) || (navigator.language.startsWith("zh") ? "zh" : "en");

export function lang(): Lang {
  return current;
}

export function setLang(l: Lang) {
  current = l;
  localStorage.setItem(LANG_KEY, l);
  document.documentElement.lang = l === "zh" ? "zh-CN" : "en";
}

/** `text` in the current language; `{name}` placeholders are filled from `args`. */
export function t(text: string, args?: Record<string, string | number>): string {
  let out = current === "zh" ? (zh[text] ?? text) : text;
  if (args) for (const [k, v] of Object.entries(args)) out = out.split(`{${k}}`).join(String(v));
  return out;
}

/** A catalog item's display name in the current language. */
export function label(item: { zh?: string; en?: string; field?: string; name?: string }): string {
  const name = current === "zh" ? item.zh || item.en : item.en || item.zh;
  return name || item.field || item.name || "";
}

export function formatNumber(n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return n.toLocaleString(current === "zh" ? "zh-CN" : "en-US", {
    maximumFractionDigits: digits,
    minimumFractionDigits: 0,
  });
}

export function percent(r: number | null | undefined): string {
  if (r === null || r === undefined || Number.isNaN(r)) return "–";
  return (r * 100).toFixed(1) + "%";
}
