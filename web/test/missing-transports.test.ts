import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { RealtimeClient } from "../src/client";
import { fakeFetch, fakeOptions } from "./fakes";

// Node 20 has fetch but no WebSocket or EventSource: the client's fallback to long-polling
// there must be visible (client.transports, one console.warn), not silent.

let clients: RealtimeClient[] = [];

/** A fresh client module each test: the warning is once per process, i.e. per module instance. */
async function freshCreate() {
  vi.resetModules();
  return (await import("../src/client")).createRealtimeClient;
}

/** Options as in Node 20: no WebSocket or EventSource class given, a fetch that never answers. */
function node20Options(overrides: Parameters<typeof fakeOptions>[0] = {}) {
  const never = fakeFetch(() => new Promise(() => {}));
  return fakeOptions({ WebSocketImpl: undefined, EventSourceImpl: undefined, fetchImpl: never.impl, ...overrides });
}

beforeEach(() => {
  vi.stubGlobal("WebSocket", undefined);
  vi.stubGlobal("EventSource", undefined);
});

afterEach(() => {
  for (const client of clients) client.close();
  clients = [];
  vi.unstubAllGlobals();
});

describe("wanted transports without an implementation", () => {
  it("lists only the usable transports in client.transports", async () => {
    const create = await freshCreate();
    vi.spyOn(console, "warn").mockImplementation(() => {});
    const client = create(node20Options());
    clients.push(client);
    expect(client.transports).toEqual(["poll"]);
  });

  it("warns once per process, naming WebSocketImpl, however many clients fall back", async () => {
    const create = await freshCreate();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    clients.push(create(node20Options()), create(node20Options()));
    expect(warn).toHaveBeenCalledTimes(1);
    expect(String(warn.mock.calls[0]?.[0])).toMatch(/no WebSocket \(pass WebSocketImpl.*ws package.*using poll$/);
  });

  it("does not warn when the caller asked for long-polling only", async () => {
    const create = await freshCreate();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const client = create(node20Options({ transports: ["poll"] }));
    clients.push(client);
    expect(client.transports).toEqual(["poll"]);
    expect(warn).not.toHaveBeenCalled();
  });

  it("names the missing class when no wanted transport is usable", async () => {
    const create = await freshCreate();
    expect(() => create(node20Options({ transports: ["websocket"] }))).toThrow(/no usable transport.*WebSocketImpl/);
  });
});
