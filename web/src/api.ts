// Calls to Shoal's HTTP API with the signed-in token.

const TOKEN_KEY = "shoal.token";

export function token(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null) {
  if (value) localStorage.setItem(TOKEN_KEY, value);
  else localStorage.removeItem(TOKEN_KEY);
}

/** An API error: `{error: {code, message, path?}}` and its HTTP status. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public path?: string,
  ) {
    super(message);
  }
  /** The message with the path it names, as shown to people. */
  describe(): string {
    return this.path && !this.message.startsWith(this.path) ? `${this.path}: ${this.message}` : this.message;
  }
}

let onUnauthorized: () => void = () => {};
export function whenUnauthorized(f: () => void) {
  onUnauthorized = f;
}

async function send(method: string, path: string, body?: BodyInit, contentType?: string): Promise<Response> {
  const headers: Record<string, string> = {};
  const t = token();
  if (t) headers["Authorization"] = `Bearer ${t}`;
  if (contentType) headers["Content-Type"] = contentType;
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let code = "http_" + response.status;
    let message = response.statusText;
    let errorPath: string | undefined;
    try {
      const e = (await response.json()).error;
      code = e.code ?? code;
      message = e.message ?? message;
      errorPath = e.path ?? undefined;
    } catch {
      // not our JSON error shape; keep the status text
    }
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, code, message, errorPath);
  }
  return response;
}

export async function get<T = any>(path: string): Promise<T> {
  return (await send("GET", path)).json();
}

export async function post<T = any>(path: string, body?: unknown): Promise<T> {
  const text = body === undefined ? undefined : JSON.stringify(body);
  return (await send("POST", path, text, "application/json")).json();
}

export async function del<T = any>(path: string): Promise<T> {
  return (await send("DELETE", path)).json();
}

export async function postRaw<T = any>(path: string, body: Blob | string): Promise<T> {
  return (await send("POST", path, body, "application/octet-stream")).json();
}

export async function download(path: string): Promise<Blob> {
  return (await send("GET", path)).blob();
}

/** Why a call failed, as text. */
export function errorText(e: unknown): string {
  if (e instanceof ApiError) return e.describe();
  if (e instanceof Error) return e.message;
  return String(e);
}
