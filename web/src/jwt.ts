/** Read (never verify) a JWT's payload in the browser: the user's name and expiry for display. */

export interface TokenClaims {
  sub?: string | number;
  name?: string;
  roles?: string[];
  exp?: number;
  [claim: string]: unknown;
}

/** The payload of a JWT, decoded as base64url UTF-8 JSON (Arabic names intact); null if malformed. */
export function decodeJwtPayload(token: string): TokenClaims | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const binary = atob(base64);
    const bytes = Uint8Array.from(binary, (char) => char.charCodeAt(0));
    const payload: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
    return typeof payload === "object" && payload !== null && !Array.isArray(payload) ? (payload as TokenClaims) : null;
  } catch {
    return null;
  }
}

/** Whether the token's `exp` has passed (tokens without `exp` never expire here). */
export function isExpired(claims: TokenClaims | null, nowMs: number = Date.now()): boolean {
  return typeof claims?.exp === "number" && claims.exp * 1000 <= nowMs;
}
