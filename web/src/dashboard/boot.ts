/** What the page learns at load: token (from `?token=`), the service URL, language. */

import { decodeJwtPayload, type TokenClaims } from "../jwt";
import { storeToken, storedToken } from "../token-store";
import { resolveBase } from "../urls";

/** A service URL fixed by the build (`esbuild --define:__REALTIME_SERVICE_URL__='"https://..."'`). */
declare const __REALTIME_SERVICE_URL__: string | undefined;

/** The `<meta>` the service writes into the page when DASHBOARD_SERVICE_URL is set. */
export const SERVICE_URL_META = "realtime-service-url";

/**
 * Move a `?token=` from the address bar into sessionStorage, then remove it from the URL
 * (and so from history, bookmarks and Referer headers).
 */
export function takeTokenFromUrl(location: Location = window.location, history: History = window.history): void {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token === null) return;
  if (token) storeToken(token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

/** The service URL the build or the serving service names; undefined: none (this origin). */
export function configuredServiceUrl(doc: Document = document): string | undefined {
  const built = typeof __REALTIME_SERVICE_URL__ === "string" ? __REALTIME_SERVICE_URL__ : undefined;
  const meta = doc.querySelector<HTMLMetaElement>(`meta[name="${SERVICE_URL_META}"]`)?.content;
  return built || meta || undefined;
}

function originOf(url: string, page: string): string | null {
  try {
    return new URL(resolveBase(url, page)).origin;
  } catch {
    return null;
  }
}

/**
 * Where the dashboard connects, and so where it sends the user's token: this page's origin
 * (undefined) or the configured service. `?ws=` may pick a URL on one of those two origins
 * only; a link pointing anywhere else is ignored.
 */
export function serviceUrl(
  search: string = window.location.search,
  page: string = window.location.href,
  configured: string | undefined = configuredServiceUrl(),
): string | undefined {
  const requested = new URLSearchParams(search).get("ws");
  if (requested) {
    const allowed = [new URL(page).origin, configured ? originOf(configured, page) : null];
    const origin = originOf(requested, page);
    if (origin !== null && allowed.includes(origin)) return requested;
  }
  return configured;
}

export interface Session {
  token: string;
  claims: TokenClaims | null;
}

export function currentSession(): Session | null {
  const token = storedToken();
  return token ? { token, claims: decodeJwtPayload(token) } : null;
}
