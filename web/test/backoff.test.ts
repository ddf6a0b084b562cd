import { describe, expect, it } from "vitest";
import { backoffCeiling, backoffDelay } from "../src/backoff";

/** mulberry32: a tiny seeded PRNG so the jitter test is repeatable. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("backoff", () => {
  it("ceiling doubles from 1 s and is capped at 5 s", () => {
    expect([0, 1, 2, 3, 4, 5, 50, 5000].map((n) => backoffCeiling(n))).toEqual([
      1000, 2000, 4000, 5000, 5000, 5000, 5000, 5000,
    ]);
  });

  it("delay spans [0, ceiling): full jitter", () => {
    expect(backoffDelay(0, undefined, () => 0)).toBe(0);
    expect(backoffDelay(0, undefined, () => 0.999999)).toBe(999);
    expect(backoffDelay(2, undefined, () => 0.5)).toBe(2000);
    expect(backoffDelay(10, undefined, () => 0.999999)).toBeLessThan(5000);
  });

  it("clamps a misbehaving random source into bounds", () => {
    expect(backoffDelay(0, undefined, () => -1)).toBe(0);
    expect(backoffDelay(0, undefined, () => 2)).toBe(1000);
  });

  it("honours custom base and cap, also for huge attempt counts", () => {
    const options = { baseMs: 100, capMs: 250 };
    expect([0, 1, 2, 3].map((n) => backoffCeiling(n, options))).toEqual([100, 200, 250, 250]);
    expect(backoffCeiling(1e9, { baseMs: 3000, capMs: 30000 })).toBe(30000);
  });

  it("jitter is spread over the whole range for a seeded source", () => {
    const random = seeded(42);
    const samples = Array.from({ length: 2000 }, () => backoffDelay(5, undefined, random));
    const mean = samples.reduce((sum, x) => sum + x, 0) / samples.length;
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...samples)).toBeLessThan(5000);
    expect(Math.min(...samples)).toBeLessThan(250);
    expect(Math.max(...samples)).toBeGreaterThan(4750);
    expect(Math.abs(mean - 2500)).toBeLessThan(200);
  });
});
