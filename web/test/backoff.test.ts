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
  it("ceiling doubles from 3 s and is capped at 30 s", () => {
    expect([0, 1, 2, 3, 4, 5, 50, 5000].map((n) => backoffCeiling(n))).toEqual([
      3000, 6000, 12000, 24000, 30000, 30000, 30000, 30000,
    ]);
  });

  it("delay spans [0, ceiling): full jitter", () => {
    expect(backoffDelay(0, undefined, () => 0)).toBe(0);
    expect(backoffDelay(0, undefined, () => 0.999999)).toBe(2999);
    expect(backoffDelay(3, undefined, () => 0.5)).toBe(12000);
    expect(backoffDelay(10, undefined, () => 0.999999)).toBeLessThan(30000);
  });

  it("clamps a misbehaving random source into bounds", () => {
    expect(backoffDelay(0, undefined, () => -1)).toBe(0);
    expect(backoffDelay(0, undefined, () => 2)).toBe(3000);
  });

  it("honours custom base and cap", () => {
    const options = { baseMs: 100, capMs: 250 };
    expect([0, 1, 2, 3].map((n) => backoffCeiling(n, options))).toEqual([100, 200, 250, 250]);
  });

  it("jitter is spread over the whole range for a seeded source", () => {
    const random = seeded(42);
    const samples = Array.from({ length: 2000 }, () => backoffDelay(2, undefined, random));
    const mean = samples.reduce((sum, x) => sum + x, 0) / samples.length;
    expect(Math.min(...samples)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...samples)).toBeLessThan(12000);
    expect(Math.min(...samples)).toBeLessThan(600);
    expect(Math.max(...samples)).toBeGreaterThan(11400);
    expect(Math.abs(mean - 6000)).toBeLessThan(400);
  });
});
