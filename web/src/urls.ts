/** Where the service lives: one base URL gives the WebSocket, SSE, ticket and REST URLs. */

/**
 * Normalise a service URL to its http(s) base without a trailing slash.
 *
 * Accepts `http(s)://host[/prefix]`, `ws(s)://host[/prefix]/ws` (the `VITE_WS_URL` style),
 * `.../events`, or a path relative to the page; empty means the page's own origin.
 */
export function resolveBase(url?: string | null, page?: string): string {
  const pageUrl = page ?? globalThis.location?.href;
  if (!url && !pageUrl) {
    throw new Error("realtime client: `url` is required outside a browser page");
  }
  const parsed = new URL(url || "/", pageUrl);
  if (parsed.protocol === "ws:") parsed.protocol = "http:";
  else if (parsed.protocol === "wss:") parsed.protocol = "https:";
  const path = parsed.pathname.replace(/\/+$/, "").replace(/\/(ws|events)$/, "");
  return parsed.origin + path;
}

/** The URL of an endpoint below the base; absolute URLs are kept as they are. */
export function endpoint(base: string, path: string, query?: Record<string, string>): string {
  const url = /^[a-z][a-z0-9+.-]*:/i.test(path) ? new URL(path) : new URL(base + (path.startsWith("/") ? path : `/${path}`));
  for (const [key, value] of Object.entries(query ?? {})) url.searchParams.set(key, value);
  return url.toString();
}

/** The WebSocket URL (`/ws`) for a base. */
export function webSocketUrl(base: string, query?: Record<string, string>): string {
  return endpoint(base, "/ws", query).replace(/^http/, "ws");
}
