/** Where the browser keeps the signed-in user's token: sessionStorage, per tab. */

export const TOKEN_STORAGE_KEY = "realtime.token";

/** The stored token, or null (also when storage is unavailable). */
export function storedToken(): string | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage.getItem(TOKEN_STORAGE_KEY);
  } catch {
    return null;
  }
}

/** The window event `storeToken` fires: clients closed for want of a token look again. */
export const TOKEN_EVENT = "realtime-token";

/** Keep (or, with null, forget) the token, and tell this page's clients it changed. */
export function storeToken(token: string | null): void {
  try {
    if (token) sessionStorage.setItem(TOKEN_STORAGE_KEY, token);
    else sessionStorage.removeItem(TOKEN_STORAGE_KEY);
  } catch {
    // Without storage the token lives only in memory for this page.
  }
  if (typeof window !== "undefined") window.dispatchEvent(new Event(TOKEN_EVENT));
}
