/**
 * Reconnect delays: exponential backoff with full jitter (AWS architecture blog's "Full
 * Jitter") and a low cap. The cap bounds how long a client waits after the service answers
 * again, whatever the outage's length: its retries are at most `capMs` apart, so it is back
 * within `capMs` (p95 ≈ 0.78 · capMs) of the service answering. The jitter spreads a whole
 * fleet's reconnects over `capMs` after a restart (`bench/restart_storm.py` measures both).
 */

import { BACKOFF } from "./generated/schema";

export interface BackoffOptions {
  /** First ceiling, in ms. */
  baseMs: number;
  /** Largest ceiling, in ms: the longest wait between two attempts. */
  capMs: number;
}

/** 1 s doubling to 5 s: the Socket.IO client's defaults, with full jitter (the service's schema, `BACKOFF`). */
export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: BACKOFF.baseMs, capMs: BACKOFF.capMs };

/** The ceiling for a 0-based attempt: min(cap, base * 2^attempt). */
export function backoffCeiling(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF): number {
  const exponent = Math.min(Math.max(0, Math.floor(attempt)), 52); // 2^53 would overflow to Infinity later
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
