/** What the page learns at load: token (from `?token=`), service URL override, language. */

import { decodeJwtPayload, type TokenClaims } from "../jwt";
import { storeToken, storedToken } from "../token-store";

declare global {
  interface Window {
    /** Service URL override, e.g. set by an inline script of the hosting page. */
    REALTIME_URL?: string;
  }
}

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

/** `?ws=` wins over `window.REALTIME_URL`; undefined means this page's origin. */
export function serviceUrl(search: string = window.location.search): string | undefined {
  return new URLSearchParams(search).get("ws") || window.REALTIME_URL || undefined;
}

export interface Session {
  token: string;
  claims: TokenClaims | null;
}

export function currentSession(): Session | null {
  const token = storedToken();
  return token ? { token, claims: decodeJwtPayload(token) } : null;
}
