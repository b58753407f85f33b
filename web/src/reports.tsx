// Reports: the funnel builder and chart, the campaign funnel with ROI, and the retention grid.

import { useState } from "preact/hooks";
import { errorText, get, post } from "./api";
import { ErrorLine, Me, Table, allowed, loadFields, useLoad } from "./common";
import { formatNumber, label, percent, t } from "./i18n";
import { Chart } from "./chart";

const TABS = [
  ["funnel", "Funnel"],
  ["roi", "Campaign ROI"],
  ["retention", "Retention"],
  ["saved", "Saved reports"],
];

export function Reports({ me, tab }: { me: Me; tab: string }) {
  return (
    <div class="reports">
      <nav class="tabs" aria-label={t("Reports")}>
        {TABS.map(([id, title]) => (
          <a href={"#/reports/" + id} class={tab === id ? "on" : ""} aria-current={tab === id ? "page" : undefined}>
            {t(title)}
          </a>
        ))}
      </nav>
      {tab === "roi" ? <Roi me={me} /> : tab === "retention" ? <Retention me={me} /> : tab === "saved" ? <Saved me={me} /> : <Funnel me={me} />}
    </div>
  );
}

function usePacks() {
  const [packs] = useLoad(() => get<{ audiences: { name: string; deleted_at: string | null }[] }>("/api/audiences"));
  return (packs?.audiences ?? []).filter((p) => !p.deleted_at).map((p) => p.name);
}

function EventSelect({ events, value, set, aria, allowAny }: { events: string[]; value: string; set: (v: string) => void; aria: string; allowAny?: boolean }) {
  return (
    <select aria-label={aria} value={value} onChange={(e) => set((e.target as HTMLSelectElement).value)}>
      {allowAny && <option value="">{t("any event")}</option>}
      {events.map((e) => (
        <option value={e}>{t(e)}</option>
      ))}
    </select>
  );
}

const DateInput = ({ value, set, aria }: { value: string; set: (v: string) => void; aria: string }) => (
  <input type="date" aria-label={aria} value={value} onInput={(e) => set((e.target as HTMLInputElement).value)} />
);

interface StepResult {
  step: number;
  event: string;
  users: number;
  conversion_from_previous: number | null;
  conversion_from_first: number | null;
  median_seconds_from_previous: number | null;
}

function duration(s: number | null) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function Funnel({ me }: { me: Me }) {
  const [fields] = useLoad(loadFields);
  const packs = usePacks();
  const [steps, setSteps] = useState<string[]>(["view_item", "add_to_cart", "purchase"]);
  const [windowN, setWindowN] = useState(7);
  const [unit, setUnit] = useState("d");
  const [modes, setModes] = useState<Record<string, boolean>>({});
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [audience, setAudience] = useState("");
  const [breakdown, setBreakdown] = useState("");
  const [answer, setAnswer] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [spec, setSpec] = useState<Record<string, unknown> | null>(null);
  const events = fields?.events ?? [];
  const breakdowns = (fields?.fields ?? []).filter((f) => ["enum", "bool", "string"].includes(f.type) && (f.table === "users" || f.table === "events") && f.sensitivity !== "confidential");

  async function run(e: Event) {
    e.preventDefault();
    setBusy(true);
    const body: Record<string, unknown> = { steps: steps.map((s) => ({ event: s })), window: `${windowN}${unit}`, mode: modes };
    if (from) body.from = from;
    if (to) body.to = to;
    if (audience) body.audience = audience;
    if (breakdown) body.breakdown = breakdown.includes(".") ? breakdown : "users." + breakdown;
    try {
      setAnswer(await post("/api/reports/funnel", body));
      setSpec(body);
      setError(null);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  const groups: { value: string | null; steps: StepResult[] }[] = answer ? (answer.groups ?? [{ value: null, steps: answer.steps }]) : [];
  const shown = groups.slice(0, 8);
  return (
    <section>
      <h1>{t("Funnel")}</h1>
      <form class="form wide" onSubmit={run}>
        <fieldset>
          <legend>{t("Steps, in order")}</legend>
          <ol class="steps">
            {steps.map((s, i) => (
              <li>
                <EventSelect events={events} value={s} aria={t("step {n}", { n: i + 1 })} set={(v) => setSteps(steps.map((x, j) => (j === i ? v : x)))} />
                {steps.length > 2 && (
                  <button type="button" class="icon" aria-label={t("remove step {n}", { n: i + 1 })} onClick={() => setSteps(steps.filter((_, j) => j !== i))}>
                    ×
                  </button>
                )}
              </li>
            ))}
          </ol>
          <button type="button" class="link" onClick={() => setSteps([...steps, events[0] ?? "purchase"])}>
            + {t("step")}
          </button>
        </fieldset>
        <div class="inline">
          <label>
            {t("Window")}
            <input type="number" min="1" value={windowN} onInput={(e) => setWindowN(Number((e.target as HTMLInputElement).value) || 1)} />
          </label>
          <select aria-label={t("window unit")} value={unit} onChange={(e) => setUnit((e.target as HTMLSelectElement).value)}>
            <option value="m">{t("minutes")}</option>
            <option value="h">{t("hours")}</option>
            <option value="d">{t("days")}</option>
          </select>
          {["strict_order", "strict_increase", "strict_deduplication"].map((m) => (
            <label class="check">
              <input type="checkbox" checked={!!modes[m]} onChange={(e) => setModes({ ...modes, [m]: (e.target as HTMLInputElement).checked })} />
              {t(m)}
            </label>
          ))}
        </div>
        <div class="inline">
          <label>
            {t("From")} <DateInput value={from} set={setFrom} aria={t("from")} />
          </label>
          <label>
            {t("To")} <DateInput value={to} set={setTo} aria={t("to")} />
          </label>
          <label>
            {t("Audience")}
            <select value={audience} onChange={(e) => setAudience((e.target as HTMLSelectElement).value)}>
              <option value="">{t("everyone")}</option>
              {packs.map((p) => (
                <option value={p}>{p}</option>
              ))}
            </select>
          </label>
          <label>
            {t("Breakdown")}
            <select value={breakdown} onChange={(e) => setBreakdown((e.target as HTMLSelectElement).value)}>
              <option value="">{t("none")}</option>
              {breakdowns.map((f) => (
                <option value={f.field}>
                  {t("table " + f.table)} · {label(f)}
                </option>
              ))}
            </select>
          </label>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? t("Running…") : t("Run")}
          </button>
        </div>
      </form>
      <ErrorLine error={error} />
      {answer && spec && <SaveReport me={me} kind="funnel" spec={spec} />}
      {answer && (
        <>
          <Chart
            label={t("Funnel")}
            height={320}
            option={{
              tooltip: { trigger: "axis" },
              legend: { show: shown.length > 1 },
              grid: { left: 70, right: 20, top: 40, bottom: 40 },
              xAxis: { type: "category", data: groups[0]?.steps.map((s) => `${s.step}. ${t(s.event)}`) ?? [] },
              yAxis: { type: "value" },
              series: shown.map((g) => ({
                name: g.value ?? t("everyone"),
                type: "bar",
                data: g.steps.map((s) => s.users),
                label: {
                  show: true,
                  position: "top",
                  formatter: (p: { dataIndex: number }) => {
                    const s = g.steps[p.dataIndex];
                    return s.step === 1 ? formatNumber(s.users) : `${formatNumber(s.users)}\n${percent(s.conversion_from_previous)}`;
                  },
                },
              })),
            }}
          />
          <p class="muted" data-testid="funnel-meta">
            {t("{ms} ms · window {w} · {x} people left out by exclusions", { ms: answer.elapsed_ms, w: duration(answer.window_seconds), x: formatNumber(answer.excluded ?? 0) })}
          </p>
          {groups.map((g) => (
            <div class="grid-wrap">
              {g.value !== null && <h3>{g.value ?? t("(no value)")}</h3>}
              <table class="grid" data-testid="funnel-steps">
                <thead>
                  <tr>
                    <th>{t("Step")}</th>
                    <th>{t("Event")}</th>
                    <th>{t("People")}</th>
                    <th>{t("From previous")}</th>
                    <th>{t("From first")}</th>
                    <th>{t("Median time from previous")}</th>
                  </tr>
                </thead>
                <tbody>
                  {g.steps.map((s) => (
                    <tr>
                      <td>{s.step}</td>
                      <td>{t(s.event)}</td>
                      <td class="num" data-users={s.users}>
                        {formatNumber(s.users)}
                      </td>
                      <td class="num">{percent(s.conversion_from_previous)}</td>
                      <td class="num">{percent(s.conversion_from_first)}</td>
                      <td class="num">{duration(s.median_seconds_from_previous)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          ))}
        </>
      )}
    </section>
  );
}

interface Campaign {
  campaign: string;
  first_day: string;
  last_day: string;
  deliveries: number;
  people: number;
}

interface Line {
  metric: string | { event: string };
  value: number;
}

const metricName = (m: Line["metric"]) => (typeof m === "string" ? m : "event:" + m.event);

function LinesEditor({ lines, set, events, title }: { lines: Line[]; set: (l: Line[]) => void; events: string[]; title: string }) {
  const metrics = ["conversions", "converters", "revenue", ...events.map((e) => "event:" + e)];
  return (
    <fieldset>
      <legend>{title}</legend>
      {lines.map((l, i) => (
        <div class="inline">
          <select
            aria-label={t("metric")}
            value={metricName(l.metric)}
            onChange={(e) => {
              const v = (e.target as HTMLSelectElement).value;
              set(lines.map((x, j) => (j === i ? { ...x, metric: v.startsWith("event:") ? { event: v.slice(6) } : v } : x)));
            }}
          >
            {metrics.map((m) => (
              <option value={m}>{m.startsWith("event:") ? t("count of {e}", { e: t(m.slice(6)) }) : t(m)}</option>
            ))}
          </select>
          ×
          <input type="number" step="any" aria-label={t("unit value (yuan)")} value={l.value} onInput={(e) => set(lines.map((x, j) => (j === i ? { ...x, value: Number((e.target as HTMLInputElement).value) } : x)))} />
          {t("yuan")}
          <button type="button" class="icon" aria-label={t("remove")} onClick={() => set(lines.filter((_, j) => j !== i))}>
            ×
          </button>
        </div>
      ))}
      <button type="button" class="link" onClick={() => set([...lines, { metric: "conversions", value: 1 }])}>
        + {t("value line")}
      </button>
    </fieldset>
  );
}

function Roi({ me }: { me: Me }) {
  const [fields] = useLoad(loadFields);
  const packs = usePacks();
  const [campaigns] = useLoad(() => get<{ campaigns: Campaign[] }>("/api/reports/campaigns"));
  const [campaign, setCampaign] = useState("");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [days, setDays] = useState(7);
  const [audience, setAudience] = useState("");
  const [control, setControl] = useState("");
  const [conversion, setConversion] = useState("purchase");
  const [positive, setPositive] = useState<Line[]>([{ metric: "revenue", value: 0.35 }]);
  const [negative, setNegative] = useState<Line[]>([{ metric: { event: "unfollow_official_account" }, value: 8 }]);
  const [perDelivery, setPerDelivery] = useState(0.05);
  const [fixed, setFixed] = useState(500);
  const [answer, setAnswer] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [spec, setSpec] = useState<Record<string, unknown> | null>(null);
  const events = fields?.events ?? [];

  const choose = (name: string) => {
    setCampaign(name);
    const c = campaigns?.campaigns.find((x) => x.campaign === name);
    if (c) {
      setFrom(c.first_day);
      setTo(c.last_day);
    }
  };
  if (!campaign && campaigns?.campaigns.length) choose(campaigns.campaigns[0].campaign);

  async function run(e: Event) {
    e.preventDefault();
    setBusy(true);
    const body: Record<string, unknown> = {
      campaign,
      from,
      to,
      days,
      conversion: { event: conversion },
      positive,
      negative,
      cost: { per_delivery: perDelivery, fixed },
    };
    if (audience) body.audience = audience;
    if (control) body.control = control;
    try {
      setAnswer(await post("/api/reports/roi", body));
      setSpec(body);
      setError(null);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  const lineLabel = (l: { metric: Line["metric"] }) => (typeof l.metric === "string" ? t(l.metric) : t("count of {e}", { e: t(l.metric.event) }));
  const sum = (ls: { value: number }[]) => ls.reduce((a, l) => a + l.value, 0);
  return (
    <section>
      <h1>{t("Campaign funnel and ROI")}</h1>
      <form class="form wide" onSubmit={run}>
        <div class="inline">
          <label>
            {t("Campaign")}
            <input list="campaigns" name="campaign" required value={campaign} onInput={(e) => choose((e.target as HTMLInputElement).value)} />
            <datalist id="campaigns">
              {(campaigns?.campaigns ?? []).map((c) => (
                <option value={c.campaign}>
                  {c.first_day} – {c.last_day}, {formatNumber(c.people)} {t("people")}
                </option>
              ))}
            </datalist>
          </label>
          <label>
            {t("Delivered from")} <DateInput value={from} set={setFrom} aria={t("from")} />
          </label>
          <label>
            {t("to")} <DateInput value={to} set={setTo} aria={t("to")} />
          </label>
          <label>
            {t("Conversion within (days)")}
            <input type="number" min="1" max="365" value={days} onInput={(e) => setDays(Number((e.target as HTMLInputElement).value) || 1)} />
          </label>
          <label>
            {t("Conversion event")}
            <EventSelect events={events} value={conversion} set={setConversion} aria={t("conversion event")} />
          </label>
        </div>
        <div class="inline">
          <label>
            {t("Target audience")}
            <select value={audience} onChange={(e) => setAudience((e.target as HTMLSelectElement).value)}>
              <option value="">{t("everyone delivered to")}</option>
              {packs.map((p) => (
                <option value={p}>{p}</option>
              ))}
            </select>
          </label>
          <label>
            {t("Holdout (control)")}
            <select value={control} onChange={(e) => setControl((e.target as HTMLSelectElement).value)}>
              <option value="">{t("none")}</option>
              {packs.map((p) => (
                <option value={p}>{p}</option>
              ))}
            </select>
          </label>
        </div>
        <div class="columns2">
          <LinesEditor title={t("Positive value")} lines={positive} set={setPositive} events={events} />
          <LinesEditor title={t("Negative value")} lines={negative} set={setNegative} events={events} />
        </div>
        <div class="inline">
          <label>
            {t("Cost per delivery")}
            <input type="number" step="any" min="0" value={perDelivery} onInput={(e) => setPerDelivery(Number((e.target as HTMLInputElement).value))} />
          </label>
          <label>
            {t("Fixed cost")}
            <input type="number" step="any" min="0" value={fixed} onInput={(e) => setFixed(Number((e.target as HTMLInputElement).value))} />
          </label>
          <button type="submit" class="primary" disabled={busy || !campaign}>
            {busy ? t("Running…") : t("Run")}
          </button>
        </div>
      </form>
      <ErrorLine error={error} />
      {answer && spec && <SaveReport me={me} kind="roi" spec={spec} />}
      {answer && (
        <div class="roi" data-testid="roi">
          <div class="columns2">
            <Chart
              label={t("Campaign funnel")}
              option={{
                tooltip: { trigger: "axis" },
                grid: { left: 70, right: 20, top: 30, bottom: 30 },
                xAxis: { type: "category", data: [t("target"), t("reached"), t("clicked"), t("converted")] },
                yAxis: { type: "value" },
                series: [{ type: "bar", data: [answer.target, answer.reached, answer.clicked, answer.converted], label: { show: true, position: "top" } }],
              }}
            />
            <Chart
              label={t("Value and cost")}
              option={{
                tooltip: { trigger: "axis" },
                grid: { left: 70, right: 20, top: 30, bottom: 30 },
                xAxis: { type: "category", data: [t("positive"), t("negative"), t("cost"), t("net")] },
                yAxis: { type: "value" },
                series: [
                  {
                    type: "bar",
                    label: { show: true, position: "top", formatter: (p: { value: number }) => formatNumber(p.value, 0) },
                    data: [
                      { value: sum(answer.positive), itemStyle: { color: "#3a9d5d" } },
                      { value: -sum(answer.negative), itemStyle: { color: "#c0504d" } },
                      { value: -answer.cost, itemStyle: { color: "#d68a2e" } },
                      { value: answer.net, itemStyle: { color: "#3b6fb6" } },
                    ],
                  },
                ],
              }}
            />
          </div>
          <dl class="facts">
            <dt>{t("Target")}</dt>
            <dd data-testid="roi-target">{formatNumber(answer.target)}</dd>
            <dt>{t("Reached")}</dt>
            <dd data-testid="roi-reached">
              {formatNumber(answer.reached)} ({percent(answer.reach_rate)})
            </dd>
            <dt>{t("Clicked")}</dt>
            <dd>
              {formatNumber(answer.clicked)} ({percent(answer.click_rate)})
            </dd>
            <dt>{t("Converted")}</dt>
            <dd data-testid="roi-converted">
              {formatNumber(answer.converted)} ({percent(answer.conversion_rate)})
            </dd>
            <dt>{t("Deliveries")}</dt>
            <dd>{formatNumber(answer.deliveries)}</dd>
          </dl>
          <table class="grid terms" data-testid="roi-terms">
            <thead>
              <tr>
                <th>{t("Term")}</th>
                <th>{t("Units")}</th>
                <th>{t("Unit value")}</th>
                <th>{t("Value (yuan)")}</th>
              </tr>
            </thead>
            <tbody>
              {answer.positive.map((l: any) => (
                <tr class="positive">
                  <td>+ {lineLabel(l)}</td>
                  <td class="num">{formatNumber(l.units, 2)}</td>
                  <td class="num">{l.unit_value}</td>
                  <td class="num">{formatNumber(l.value, 2)}</td>
                </tr>
              ))}
              {answer.negative.map((l: any) => (
                <tr class="negative">
                  <td>− {lineLabel(l)}</td>
                  <td class="num">{formatNumber(l.units, 2)}</td>
                  <td class="num">{l.unit_value}</td>
                  <td class="num">−{formatNumber(l.value, 2)}</td>
                </tr>
              ))}
              <tr class="cost">
                <td>− {t("cost")}</td>
                <td class="num">{formatNumber(answer.deliveries)}</td>
                <td class="num">{perDelivery}</td>
                <td class="num" data-testid="roi-cost">
                  −{formatNumber(answer.cost, 2)}
                </td>
              </tr>
              <tr class="net">
                <td>= {t("net")}</td>
                <td />
                <td />
                <td class="num">{formatNumber(answer.net, 2)}</td>
              </tr>
            </tbody>
          </table>
          <p class="roi-figure">
            ROI <strong data-testid="roi-value">{answer.roi === null ? "–" : percent(answer.roi)}</strong>
          </p>
          {answer.holdout && (
            <p data-testid="roi-holdout">
              {t("Holdout: target converted {a}, control {b}; uplift {u} (95% CI {lo} to {hi}), {n} incremental converters.", {
                a: percent(answer.holdout.target_rate),
                b: percent(answer.holdout.control_rate),
                u: percent(answer.holdout.uplift),
                lo: percent(answer.holdout.uplift_low),
                hi: percent(answer.holdout.uplift_high),
                n: formatNumber(answer.holdout.incremental_converters, 1),
              })}
            </p>
          )}
        </div>
      )}
    </section>
  );
}

function Retention({ me }: { me: Me }) {
  const [fields] = useLoad(loadFields);
  const packs = usePacks();
  const [cohort, setCohort] = useState("purchase");
  const [audience, setAudience] = useState("");
  const [ret, setRet] = useState("");
  const [period, setPeriod] = useState("week");
  const [periods, setPeriods] = useState(8);
  const [kind, setKind] = useState("first_time");
  const [from, setFrom] = useState("");
  const [to, setTo] = useState("");
  const [answer, setAnswer] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [spec, setSpec] = useState<Record<string, unknown> | null>(null);
  const events = fields?.events ?? [];

  async function run(e: Event) {
    e.preventDefault();
    setBusy(true);
    const body: Record<string, unknown> = { period, periods, kind };
    if (audience) body.audience = audience;
    else body.cohort = { event: cohort };
    if (ret) body.return = { event: ret };
    if (from) body.from = from;
    if (to) body.to = to;
    try {
      setAnswer(await post("/api/reports/retention", body));
      setSpec(body);
      setError(null);
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  }
  const heat = (r: number | null | undefined) => (r === null || r === undefined ? "transparent" : `rgba(59, 111, 182, ${Math.min(1, 0.08 + r * 0.9).toFixed(2)})`);
  const n = answer ? Math.max(0, ...answer.cohorts.map((c: any) => c.rates.length)) : 0;
  return (
    <section>
      <h1>{t("Retention")}</h1>
      <form class="form wide" onSubmit={run}>
        <div class="inline">
          <label>
            {t("Cohort: people who did")}
            <EventSelect events={events} value={cohort} set={setCohort} aria={t("cohort event")} />
          </label>
          <label>
            {t("or are in audience")}
            <select value={audience} onChange={(e) => setAudience((e.target as HTMLSelectElement).value)}>
              <option value="">{t("none")}</option>
              {packs.map((p) => (
                <option value={p}>{p}</option>
              ))}
            </select>
          </label>
          <label>
            {t("Returning with")}
            <EventSelect events={events} value={ret} set={setRet} aria={t("return event")} allowAny />
          </label>
          <label>
            {t("Kind")}
            <select value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value)}>
              <option value="first_time">{t("first time")}</option>
              <option value="recurring">{t("recurring")}</option>
            </select>
          </label>
        </div>
        <div class="inline">
          <label>
            {t("By")}
            <select value={period} onChange={(e) => setPeriod((e.target as HTMLSelectElement).value)}>
              <option value="day">{t("day")}</option>
              <option value="week">{t("week")}</option>
            </select>
          </label>
          <label>
            {t("Periods")}
            <input type="number" min="1" max="90" value={periods} onInput={(e) => setPeriods(Number((e.target as HTMLInputElement).value) || 1)} />
          </label>
          <label>
            {t("From")} <DateInput value={from} set={setFrom} aria={t("from")} />
          </label>
          <label>
            {t("To")} <DateInput value={to} set={setTo} aria={t("to")} />
          </label>
          <button type="submit" class="primary" disabled={busy}>
            {busy ? t("Running…") : t("Run")}
          </button>
        </div>
      </form>
      <ErrorLine error={error} />
      {answer && spec && <SaveReport me={me} kind="retention" spec={spec} />}
      {answer && (
        <div class="grid-wrap">
          <table class="grid retention" data-testid="retention">
            <thead>
              <tr>
                <th>{t("Cohort")}</th>
                <th>{t("People")}</th>
                {Array.from({ length: n }, (_, i) => (
                  <th>
                    {t(period)} {i}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {answer.cohorts.map((c: any) => (
                <tr>
                  <td>{c.cohort}</td>
                  <td class="num">{formatNumber(c.size)}</td>
                  {Array.from({ length: n }, (_, i) => (
                    <td class="num" style={{ background: heat(c.rates[i]) }} title={c.retained[i] === undefined ? "" : `${formatNumber(c.retained[i])} ${t("people")}`}>
                      {c.rates[i] === undefined ? "" : percent(c.rates[i])}
                    </td>
                  ))}
                </tr>
              ))}
              {answer.average && (
                <tr class="average">
                  <td>{t("average")}</td>
                  <td />
                  {Array.from({ length: n }, (_, i) => (
                    <td class="num">{answer.average[i] === undefined || answer.average[i] === null ? "" : percent(answer.average[i])}</td>
                  ))}
                </tr>
              )}
            </tbody>
          </table>
        </div>
      )}
    </section>
  );
}

/** Keeps the report just run under a name: refreshed on a schedule and when its packs change. */
function SaveReport({ me, kind, spec }: { me: Me; kind: string; spec: Record<string, unknown> }) {
  const [name, setName] = useState("");
  const [schedule, setSchedule] = useState("");
  const [zone, setZone] = useState("Asia/Shanghai");
  const [saved, setSaved] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  if (!allowed(me, "analyst")) return null;
  async function save(e: Event) {
    e.preventDefault();
    try {
      const body: Record<string, unknown> = { name, kind, spec };
      if (schedule.trim()) Object.assign(body, { schedule: schedule.trim(), time_zone: zone });
      const answer = await post<{ run: { version: number } }>("/api/reports/saved", body);
      setSaved(t("saved as {name}, version {v}", { name, v: answer.run.version }));
      setError(null);
    } catch (err) {
      setError(errorText(err));
    }
  }
  return (
    <form class="inline save-report" onSubmit={save} aria-label={t("Save report")}>
      <input aria-label={t("report name")} placeholder={t("report name")} required value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
      <input aria-label={t("refresh schedule (cron, optional)")} placeholder={t("refresh schedule (cron, optional)")} value={schedule} onInput={(e) => setSchedule((e.target as HTMLInputElement).value)} />
      {schedule.trim() && <input aria-label={t("Time zone")} value={zone} onInput={(e) => setZone((e.target as HTMLInputElement).value)} />}
      <button type="submit">{t("Save report")}</button>
      {saved && (
        <a href="#/reports/saved" data-testid="report-saved">
          {saved}
        </a>
      )}
      <ErrorLine error={error} />
    </form>
  );
}

interface SavedSummary {
  name: string;
  kind: string;
  owner: string;
  schedule: string | null;
  time_zone: string | null;
  next_run: string | null;
  last_run: { version: number | null; started_at: string; status: string; trigger: string; error: string | null } | null;
}

/** Saved reports: what BI reads from the report_* tables, with their runs. */
function Saved({ me }: { me: Me }) {
  const [list, error, reload] = useLoad(() => get<{ reports: SavedSummary[] }>("/api/reports/saved"));
  const [open, setOpen] = useState<any>(null);
  const [actionError, setActionError] = useState<string | null>(null);
  async function show(name: string) {
    try {
      setOpen(await get("/api/reports/saved/" + encodeURIComponent(name)));
      setActionError(null);
    } catch (e) {
      setActionError(errorText(e));
    }
  }
  async function refresh(name: string) {
    try {
      await post("/api/reports/saved/" + encodeURIComponent(name) + "/refresh");
      reload();
      await show(name);
    } catch (e) {
      setActionError(errorText(e));
    }
  }
  const rows = open?.rows ?? [];
  const columns = rows.length ? Object.keys(rows[0]).filter((c) => !["report", "refreshed_at"].includes(c)) : [];
  return (
    <section>
      <h1>{t("Saved reports")}</h1>
      <p class="muted">{t("Each run lands in report_runs and report_funnel / report_retention / report_roi, which BI tools read over the Postgres endpoint.")}</p>
      <ErrorLine error={error ? errorText(error) : actionError} />
      {list && (
        <div class="grid-wrap">
          <table class="grid" data-testid="saved-reports">
            <thead>
              <tr>
                <th>{t("Name")}</th>
                <th>{t("Kind")}</th>
                <th>{t("Version")}</th>
                <th>{t("Last refresh")}</th>
                <th>{t("Status")}</th>
                <th>{t("Schedule")}</th>
                <th>{t("Next run")}</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {list.reports.map((r) => (
                <tr data-name={r.name}>
                  <td>
                    <button type="button" class="link" onClick={() => show(r.name)}>
                      {r.name}
                    </button>
                  </td>
                  <td>{t(r.kind)}</td>
                  <td class="num">{r.last_run?.version ?? "–"}</td>
                  <td>
                    {r.last_run?.started_at.replace("T", " ").slice(0, 19)} {r.last_run && `(${t(r.last_run.trigger)})`}
                  </td>
                  <td>
                    <span class={"status " + (r.last_run?.status ?? "none")}>{t(r.last_run?.status ?? "none")}</span>
                  </td>
                  <td>{r.schedule ? `${r.schedule} (${r.time_zone ?? "UTC"})` : "–"}</td>
                  <td>{r.next_run ? r.next_run.replace("T", " ").slice(0, 16) + " UTC" : "–"}</td>
                  <td>
                    {allowed(me, "analyst") && (
                      <button type="button" onClick={() => refresh(r.name)}>
                        {t("Refresh now")}
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          {list.reports.length === 0 && <p class="muted">{t("No saved reports yet: run a report and save it.")}</p>}
        </div>
      )}
      {open && (
        <>
          <h2>
            {open.report.name} · <code>{open.table}</code> · {t("version {v}", { v: rows[0]?.version ?? "–" })}
          </h2>
          <Table testId="saved-rows" columns={columns} rows={rows} />
          <details>
            <summary>{t("Spec")}</summary>
            <pre class="definition">{JSON.stringify(open.report.spec, null, 2)}</pre>
          </details>
        </>
      )}
    </section>
  );
}
