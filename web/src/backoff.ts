/** Reconnect delays: exponential backoff with full jitter (AWS architecture blog's "Full Jitter"). */

export interface BackoffOptions {
  /** First ceiling, in ms (the seed's 3 s reconnect). */
  baseMs: number;
  /** Largest ceiling, in ms. */
  capMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 3000, capMs: 30000 };

/** The ceiling for a 0-based attempt: min(cap, base * 2^attempt). */
export function backoffCeiling(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const exponent = Math.max(0, Math.floor(attempt));
  return Math.min(options.capMs, options.baseMs * 2 ** exponent);
}

/** A delay drawn uniformly from [0, ceiling); `random` returns [0, 1) like Math.random. */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, options));
}
