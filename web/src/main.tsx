import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { ApiError, errorText, get, setToken, token, whenUnauthorized } from "./api";
import { Lang, lang, setLang, t } from "./i18n";
import { Builder } from "./builder";
import { SqlEditor } from "./sql";
import { AudienceDetail, Audiences } from "./audiences";
import { Reports } from "./reports";
import { CatalogPage } from "./catalog";
import { Me, allowed } from "./common";
import "./style.css";

/** The part of the URL after `#`, e.g. `/audiences/men`. */
function useRoute(): string {
  const [route, setRoute] = useState(location.hash.slice(1) || "/builder");
  useEffect(() => {
    const f = () => setRoute(location.hash.slice(1) || "/builder");
    window.addEventListener("hashchange", f);
    return () => window.removeEventListener("hashchange", f);
  }, []);
  return route;
}

/** `/?token=…` signs in once and leaves the address bar without it. */
function takeTokenFromUrl() {
  const url = new URL(location.href);
  const given = url.searchParams.get("token");
  if (given) {
    setToken(given);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

function SignIn({ onSignedIn, problem }: { onSignedIn: (me: Me) => void; problem?: string }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState(problem ?? "");
  const [busy, setBusy] = useState(false);
  async function submit(e: Event) {
    e.preventDefault();
    setBusy(true);
    setToken(value.trim());
    try {
      onSignedIn(await get<Me>("/api/whoami"));
    } catch (err) {
      setToken(null);
      setError(err instanceof ApiError && err.status === 401 ? t("That token is unknown or revoked.") : errorText(err));
    } finally {
      setBusy(false);
    }
  }
  return (
    <main class="signin">
      <form onSubmit={submit} aria-label={t("Sign in")}>
        <h1>Shoal</h1>
        <p>{t("Sign in with an API token (shoal token create --role analyst).")}</p>
        <label>
          {t("API token")}
          <input
            id="token"
            type="password"
            autoComplete="off"
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            autoFocus
          />
        </label>
        {error && <p class="error" role="alert">{error}</p>}
        <button type="submit" disabled={busy || !value.trim()}>
          {t("Sign in")}
        </button>
        <LanguageSwitch />
      </form>
    </main>
  );
}

function LanguageSwitch() {
  const [, redraw] = useState(0);
  const choose = (l: Lang) => {
    setLang(l);
    redraw((n) => n + 1);
    window.dispatchEvent(new Event("shoal-lang"));
  };
  return (
    <div class="lang" role="group" aria-label="Language / 语言">
      <button type="button" class={lang() === "en" ? "on" : ""} onClick={() => choose("en")}>
        EN
      </button>
      <button type="button" class={lang() === "zh" ? "on" : ""} onClick={() => choose("zh")}>
        中文
      </button>
    </div>
  );
}

const PAGES: { path: string; title: string; min: Me["role"] }[] = [
  { path: "/builder", title: "Audience builder", min: "viewer" },
  { path: "/sql", title: "SQL", min: "analyst" },
  { path: "/audiences", title: "Audiences", min: "viewer" },
  { path: "/reports/funnel", title: "Reports", min: "viewer" },
  { path: "/catalog", title: "Catalog", min: "viewer" },
];


function App() {
  const [me, setMe] = useState<Me | null>(null);
  const [checking, setChecking] = useState(!!token());
  const [problem, setProblem] = useState<string | undefined>();
  const [, redraw] = useState(0);
  const route = useRoute();

  useEffect(() => {
    whenUnauthorized(() => {
      setToken(null);
      setMe(null);
      setProblem(t("Your token is no longer valid; sign in again."));
    });
    const f = () => redraw((n) => n + 1);
    window.addEventListener("shoal-lang", f);
    if (token()) {
      get<Me>("/api/whoami")
        .then(setMe)
        .catch(() => setToken(null))
        .finally(() => setChecking(false));
    }
    return () => window.removeEventListener("shoal-lang", f);
  }, []);

  if (checking) return <main class="signin">…</main>;
  if (!me) return <SignIn onSignedIn={setMe} problem={problem} />;

  const page = PAGES.find((p) => route === p.path || route.startsWith(p.path.split("/").slice(0, 2).join("/") + "/"));
  let body;
  if (route.startsWith("/audiences/")) body = <AudienceDetail me={me} name={decodeURIComponent(route.slice(11))} />;
  else if (route === "/audiences") body = <Audiences me={me} />;
  else if (route === "/sql") body = allowed(me, "analyst") ? <SqlEditor me={me} /> : <p>{t("Your role cannot run SQL.")}</p>;
  else if (route.startsWith("/reports")) body = <Reports me={me} tab={route.split("/")[2] || "funnel"} />;
  else if (route === "/catalog") body = <CatalogPage me={me} />;
  else body = <Builder me={me} />;

  return (
    <div class="shell">
      <header>
        <a class="brand" href="#/builder">
          Shoal
        </a>
        <nav aria-label={t("Pages")}>
          {PAGES.filter((p) => allowed(me, p.min)).map((p) => (
            <a href={"#" + p.path} class={page?.path === p.path ? "on" : ""} aria-current={page?.path === p.path ? "page" : undefined}>
              {t(p.title)}
            </a>
          ))}
        </nav>
        <span class="me" data-role={me.role}>
          {me.name} · {t(me.role)}
        </span>
        <LanguageSwitch />
        <button
          type="button"
          class="link"
          onClick={() => {
            setToken(null);
            setMe(null);
            setProblem(undefined);
          }}
        >
          {t("Sign out")}
        </button>
      </header>
      <main>{body}</main>
    </div>
  );
}

takeTokenFromUrl();
setLang(lang());
render(<App />, document.getElementById("app")!);
