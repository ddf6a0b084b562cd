import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createRealtimeClient, type RealtimeClient, type Status } from "../src/client";
import type { RealtimeEvent } from "../src/events";
import {
  FakeEventSource,
  FakeWebSocket,
  MemoryStorage,
  connectedMessage,
  fakeFetch,
  fakeOptions,
  flush,
} from "./fakes";

let clients: RealtimeClient[] = [];

function start(overrides: Parameters<typeof fakeOptions>[0] = {}) {
  const options = fakeOptions(overrides);
  const client = createRealtimeClient(options);
  clients.push(client);
  return { client, options };
}

/** Advance fake time in small steps until the n-th WebSocket exists; returns the ms waited. */
async function untilSocket(n: number): Promise<number> {
  let waited = 0;
  while (FakeWebSocket.instances.length < n && waited < 60_000) {
    await vi.advanceTimersByTimeAsync(100);
    waited += 100;
  }
  return waited;
}

async function openWebSocket(socket = FakeWebSocket.last, connected: Record<string, unknown> = {}) {
  socket.accept();
  socket.deliver(connectedMessage(connected));
  await flush();
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  FakeWebSocket.reset();
  FakeEventSource.reset();
});

afterEach(() => {
  for (const client of clients) client.close();
  clients = [];
  vi.useRealTimers();
});

describe("connecting", () => {
  it("opens a WebSocket at /ws with the token and is open after `connected`", async () => {
    const { client } = start();
    const statuses: Status[] = [];
    client.onStatus(({ status }) => statuses.push(status));
    expect(client.status).toBe("connecting");
    await flush();
    const socket = FakeWebSocket.last;
    expect(socket.url.startsWith("ws://svc.test/ws?")).toBe(true);
    expect(socket.query.get("token")).toBe("token-1");
    expect(socket.query.has("last_event_id")).toBe(false);
    await openWebSocket(socket);
    expect(client.status).toBe("open");
    expect(client.transport).toBe("websocket");
    expect(statuses).toEqual(["connecting", "open"]); // first change: the transport is known
  });

  it("accepts a VITE_WS_URL-style url and keeps its path prefix", async () => {
    start({ url: "wss://example.test/rt/ws" });
    await flush();
    expect(FakeWebSocket.last.url.startsWith("wss://example.test/rt/ws?")).toBe(true);
  });

  it("sends the `events` filter at connect", async () => {
    start({ events: ["task_created", "task_deleted"] });
    await flush();
    expect(FakeWebSocket.last.query.get("events")).toBe("task_created,task_deleted");
  });

  it("delivers events to type listeners and to `*`", async () => {
    const { client } = start();
    const typed: string[] = [];
    const all: string[] = [];
    client.on("task_created", (event) => typed.push(event.title));
    const off = client.on("*", (event) => all.push(event.type));
    await flush();
    await openWebSocket();
    FakeWebSocket.last.deliver({ id: "1", type: "task_created", ts: "t", title: "Backup", taskId: 1 });
    off();
    FakeWebSocket.last.deliver({ id: "2", type: "task_deleted", ts: "t", taskId: 1 });
    expect(typed).toEqual(["Backup"]);
    expect(all).toEqual(["connected", "task_created"]);
  });

  it("stays closed without a token", async () => {
    const { client } = start({ getToken: () => null });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(client.status).toBe("closed");
    expect(client.reason).toBe("unauthorized");
  });
});

describe("tickets", () => {
  it("connects with a one-time ticket fetched with the Bearer token", async () => {
    const fetch = fakeFetch(() => ({ status: 200, body: { ticket: "tk-1", expiresIn: 60 } }));
    start({ ticketUrl: undefined, fetchImpl: fetch.impl });
    await flush();
    expect(fetch.calls).toEqual([
      expect.objectContaining({
        url: "http://svc.test/api/realtime/ticket",
        method: "POST",
        headers: { Authorization: "Bearer token-1" },
      }),
    ]);
    expect(FakeWebSocket.last.query.get("ticket")).toBe("tk-1");
    expect(FakeWebSocket.last.query.has("token")).toBe(false);
  });

  it("fetches a fresh ticket for every connection attempt", async () => {
    let n = 0;
    const fetch = fakeFetch(() => ({ status: 200, body: { ticket: `tk-${++n}`, expiresIn: 60 } }));
    start({ ticketUrl: "/custom/ticket", fetchImpl: fetch.impl });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(1012, "service restart");
    await vi.advanceTimersByTimeAsync(1500);
    expect(fetch.calls.map((c) => c.url)).toEqual(["http://svc.test/custom/ticket", "http://svc.test/custom/ticket"]);
    expect(FakeWebSocket.last.query.get("ticket")).toBe("tk-2");
  });

  it.each([
    ["404", { status: 404 }],
    ["405", { status: 405, body: { error: "method not allowed" } }],
  ])("sends ?token= only when the server says it has no tickets (%s)", async (_name, answer) => {
    const fetch = fakeFetch(() => answer);
    start({ ticketUrl: undefined, fetchImpl: fetch.impl });
    await flush();
    expect(FakeWebSocket.last.query.get("token")).toBe("token-1");
    expect(FakeWebSocket.last.query.has("ticket")).toBe(false);
  });

  it.each([
    ["a network failure", new TypeError("Failed to fetch")],
    ["a server error", { status: 503, body: { error: "unavailable" } }],
    ["a gateway error", { status: 502 }],
    ["a body without a ticket", { status: 200, body: { nope: 1 } }],
  ])("puts no credential in a URL after %s: waits and asks for a ticket again", async (_name, answer) => {
    let calls = 0;
    const fetch = fakeFetch(() => (++calls === 1 ? answer : { status: 200, body: { ticket: "tk-2", expiresIn: 60 } }));
    const { client } = start({ ticketUrl: undefined, fetchImpl: fetch.impl });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(client.status).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(499); // random 0.5 of the 1 s ceiling
    expect(fetch.calls).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    await flush();
    expect(fetch.calls).toHaveLength(2);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(FakeWebSocket.last.query.get("ticket")).toBe("tk-2");
    expect(FakeWebSocket.last.query.has("token")).toBe(false);
  });

  it("keeps asking for a ticket through a long outage, backing off to the cap, never using the token", async () => {
    const fetch = fakeFetch(() => new TypeError("Failed to fetch"));
    start({ ticketUrl: undefined, fetchImpl: fetch.impl });
    await flush();
    await vi.advanceTimersByTimeAsync(60_000);
    // random 0.5: waits of 0.5, 1, 2, 2.5, 2.5, … s
    expect(fetch.calls.length).toBeGreaterThan(20);
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it("gives up on a ticket request that hangs and retries it, without the token", async () => {
    let calls = 0;
    const answering = fakeFetch(() => ({ status: 200, body: { ticket: "tk-late", expiresIn: 60 } }));
    const fetchImpl = ((url: string, init?: RequestInit) => {
      calls += 1;
      if (calls > 1) return answering.impl(url, init);
      return new Promise((_resolve, reject) => {
        init?.signal?.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      });
    }) as unknown as typeof fetch;
    start({ ticketUrl: undefined, fetchImpl, reconnect: { openTimeoutMs: 4000 } });
    await vi.advanceTimersByTimeAsync(4000);
    expect(FakeWebSocket.instances).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(500);
    await flush();
    expect(calls).toBe(2);
    expect(FakeWebSocket.last.query.get("ticket")).toBe("tk-late");
    expect(FakeWebSocket.last.query.has("token")).toBe(false);
  });

  it("refuses to start without fetch unless the app opted in to ?token=", () => {
    const original = globalThis.fetch;
    try {
      // @ts-expect-error: a browser without fetch
      delete globalThis.fetch;
      expect(() => createRealtimeClient(fakeOptions({ ticketUrl: undefined }))).toThrow(/ticketUrl: null/);
      const optedIn = createRealtimeClient(fakeOptions({ ticketUrl: null }));
      clients.push(optedIn);
    } finally {
      globalThis.fetch = original;
    }
  });

  it("treats a 401 from the ticket endpoint like close code 4401", async () => {
    const fetch = fakeFetch(() => ({ status: 401, body: { error: "unauthorized", reason: "token expired" } }));
    const getToken = vi.fn(() => "token-1");
    const { client } = start({ ticketUrl: undefined, fetchImpl: fetch.impl, getToken });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(client.status).toBe("closed");
    expect(client.reason).toBe("unauthorized");
  });
});

describe("close codes", () => {
  it.each([
    [1000, "normal"],
    [1009, "client_error"],
    [4400, "client_error"],
    [4000, "disconnected"],
    [4403, "forbidden"],
  ])("stops on %i (%s)", async (code, reason) => {
    const { client } = start();
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(code);
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("closed");
    expect(client.reason).toBe(reason);
    expect(vi.getTimerCount()).toBe(0);
  });

  it.each([1001, 1006, 1011, 1012, 4408, 4429, 4999])("reconnects with backoff on %i", async (code) => {
    const { client } = start();
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(code);
    expect(client.status).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(499); // random 0.5 of the 1 s ceiling
    expect(FakeWebSocket.instances).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("4401 reconnects at once when getToken gives a new token", async () => {
    const tokens = ["old", "new"];
    const getToken = vi.fn(() => tokens.shift() ?? "new");
    const { client } = start({ getToken });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(4401, "token expired");
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last.query.get("token")).toBe("new");
    expect(client.status).toBe("reconnecting");
  });

  it("4401 with the same token again stops with reason `unauthorized`", async () => {
    const getToken = vi.fn(() => "same");
    const { client } = start({ getToken });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(4401, "invalid token");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("closed");
    expect(client.reason).toBe("unauthorized");
  });

  it("after `unauthorized`, becoming visible with a new token reconnects", async () => {
    let token = "same";
    const { client, options } = start({ getToken: () => token });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(4401);
    await flush();
    expect(client.reason).toBe("unauthorized");
    token = "refreshed";
    options.document.show();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last.query.get("token")).toBe("refreshed");
  });

  it("never reconnects with `reconnect: false`", async () => {
    const { client } = start({ reconnect: false });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("closed");
  });
});

describe("backoff", () => {
  it("doubles the ceiling from 1 s per failed attempt up to 5 s", async () => {
    start({ transports: ["websocket"] });
    await flush();
    const delays: number[] = [];
    for (let i = 0; i < 6; i += 1) {
      FakeWebSocket.last.fail();
      delays.push(await untilSocket(i + 2));
    }
    // random() = 0.5: half of 1, 2, 4, 5 (cap), 5, 5 s.
    expect(delays).toEqual([500, 1000, 2000, 2500, 2500, 2500]);
  });

  it("retries at most 5 s apart however long the outage lasts", async () => {
    start({ transports: ["websocket"], random: () => 0.999999 });
    await flush();
    const delays: number[] = [];
    for (let i = 0; i < 40; i += 1) {
      FakeWebSocket.last.fail();
      delays.push(await untilSocket(i + 2));
    }
    expect(Math.max(...delays)).toBe(5000);
    expect(delays.slice(3).every((d) => d === 5000)).toBe(true);
  });

  it("starts from the first ceiling again as soon as the service says `connected`", async () => {
    start({ transports: ["websocket"] });
    await flush();
    for (let i = 0; i < 5; i += 1) {
      FakeWebSocket.last.fail();
      await untilSocket(i + 2);
    }
    await openWebSocket();
    await vi.advanceTimersByTimeAsync(3000); // longer than stableMs (1 s), far less than the old 10 s
    FakeWebSocket.last.serverClose(1012, "service restart");
    expect(await untilSocket(7)).toBe(500);
  });

  it("a connection that drops within stableMs continues the streak it interrupted", async () => {
    start({ transports: ["websocket"] });
    await flush();
    FakeWebSocket.last.fail();
    await untilSocket(2);
    FakeWebSocket.last.fail();
    await untilSocket(3); // next ceiling: 4 s
    await openWebSocket();
    await vi.advanceTimersByTimeAsync(900);
    FakeWebSocket.last.serverClose(1006);
    expect(await untilSocket(4)).toBe(2000);
    await openWebSocket();
    await vi.advanceTimersByTimeAsync(900);
    FakeWebSocket.last.serverClose(1006);
    expect(await untilSocket(5)).toBe(2500);
  });

  it("uses the injected random source for jitter", async () => {
    start({ transports: ["websocket"], random: () => 0 });
    await flush();
    FakeWebSocket.last.fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("reconnects at once on `online` instead of waiting out the backoff", async () => {
    const { options } = start({ transports: ["websocket"] });
    await flush();
    FakeWebSocket.last.fail();
    options.window.dispatchEvent(new Event("online"));
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("reconnects at once when the page becomes visible while disconnected", async () => {
    const { options } = start({ transports: ["websocket"] });
    await flush();
    FakeWebSocket.last.fail();
    options.document.hide();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
    options.document.show();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it("ignores `online` while connected", async () => {
    const { options } = start();
    await flush();
    await openWebSocket();
    options.window.dispatchEvent(new Event("online"));
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe("SSE fallback", () => {
  it("switches to SSE after two WebSocket attempts that never opened, and remembers it", async () => {
    const storage = new MemoryStorage();
    const { client } = start({ storage });
    await flush();
    FakeWebSocket.last.fail();
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeEventSource.instances).toHaveLength(0);
    FakeWebSocket.last.fail();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    const source = FakeEventSource.last;
    expect(source.url.startsWith("http://svc.test/events?")).toBe(true);
    expect(source.query.get("token")).toBe("token-1");
    source.accept();
    source.deliver("connected", connectedMessage({ transport: "sse" }));
    expect(client.status).toBe("open");
    expect(client.transport).toBe("sse");

    client.close();
    start({ storage });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2); // no new WebSocket
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it("switches to SSE when the WebSocket never opens within the timeout", async () => {
    start({ reconnect: { openTimeoutMs: 5000 } });
    await flush();
    await vi.advanceTimersByTimeAsync(4999);
    expect(FakeEventSource.instances).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    await flush();
    expect(FakeWebSocket.instances[0]?.closedWith).toBe(1000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it("keeps WebSocket when SSE fails too (server down, not a proxy)", async () => {
    const storage = new MemoryStorage();
    start({ storage });
    await flush();
    FakeWebSocket.last.fail();
    await vi.advanceTimersByTimeAsync(1500);
    FakeWebSocket.last.fail();
    await flush();
    FakeEventSource.last.fail();
    expect(await untilSocket(3)).toBe(1000); // backoff (0.5 of 2 s), then WebSocket again
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(storage.getItem("realtime.transport:http://svc.test")).toBeNull();
  });

  it("does not count failures after an open connection toward the fallback", async () => {
    start();
    await flush();
    for (let i = 0; i < 3; i += 1) {
      await openWebSocket();
      FakeWebSocket.last.serverClose(1006);
      await untilSocket(i + 2);
    }
    expect(FakeWebSocket.instances).toHaveLength(4);
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it("uses only SSE when told to", async () => {
    const { client } = start({ transports: ["sse"] });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    FakeEventSource.last.accept();
    FakeEventSource.last.deliver("connected", connectedMessage({ transport: "sse" }));
    expect(client.transport).toBe("sse");
  });

  it("treats the SSE `close` event with code 4401 like close code 4401", async () => {
    const getToken = vi.fn(() => "same");
    const { client } = start({ transports: ["sse"], getToken });
    await flush();
    const source = FakeEventSource.last;
    source.accept();
    source.deliver("close", { code: 4401, reason: "token expired" });
    await flush();
    expect(source.readyState).toBe(2);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(client.status).toBe("closed");
    expect(client.reason).toBe("unauthorized");
  });

  it("takes over EventSource's own retry: closes it and reconnects with backoff", async () => {
    start({ transports: ["sse"] });
    await flush();
    const source = FakeEventSource.last;
    source.accept();
    source.fail();
    expect(source.readyState).toBe(2);
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it("receives custom named SSE events once a listener asks for the type", async () => {
    const { client } = start({ transports: ["sse"] });
    await flush();
    const got: RealtimeEvent[] = [];
    client.on("deploy.finished", (event) => got.push(event));
    FakeEventSource.last.accept();
    FakeEventSource.last.deliver("deploy.finished", { id: "9", type: "deploy.finished", ts: "t", ok: true }, "9");
    expect(got).toEqual([{ id: "9", type: "deploy.finished", ts: "t", ok: true }]);
    expect(client.lastEventId).toBe("9");
  });
});

describe("resume", () => {
  it("passes the last event id on reconnect, never the id of `connected` or `pong`", async () => {
    const { client } = start();
    await flush();
    await openWebSocket();
    expect(client.lastEventId).toBeNull();
    const socket = FakeWebSocket.last;
    socket.deliver({ id: "0000000a00000001", type: "task_created", ts: "t", taskId: 1, title: "a" });
    socket.deliver({ id: "0000000a00000002", type: "task_executed", ts: "t", taskId: 1 });
    socket.deliver({ id: "pong-id", type: "pong", ts: "t" });
    socket.deliver({ id: "resync-id", type: "resync", reason: "gap" });
    expect(client.lastEventId).toBe("0000000a00000002");
    socket.serverClose(1012);
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeWebSocket.last.query.get("last_event_id")).toBe("0000000a00000002");
    await openWebSocket(FakeWebSocket.last, { id: "another-conn-id", resumed: true });
    expect(client.lastEventId).toBe("0000000a00000002");
  });

  it("passes last_event_id to SSE too, from data ids or `id:` lines", async () => {
    const { client } = start({ transports: ["sse"] });
    await flush();
    const source = FakeEventSource.last;
    source.accept();
    source.deliver("connected", connectedMessage({ transport: "sse" }), "");
    source.deliver("task_deleted", { id: "00000001000000ff", type: "task_deleted", ts: "t", taskId: 3 }, "00000001000000ff");
    source.deliver("task_deleted", { type: "task_deleted", ts: "t", taskId: 4 }, "0000000100000100");
    expect(client.lastEventId).toBe("0000000100000100");
    source.fail();
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeEventSource.last.query.get("last_event_id")).toBe("0000000100000100");
  });
});

describe("messages", () => {
  it("ping resolves with the round trip of the matching pong", async () => {
    const { client } = start();
    await flush();
    await openWebSocket();
    const socket = FakeWebSocket.last;
    const rtt = client.ping();
    const sent = socket.messages.at(-1);
    expect(sent).toMatchObject({ type: "ping" });
    await vi.advanceTimersByTimeAsync(42);
    socket.deliver({ type: "pong", ts: "t", nonce: "other" });
    socket.deliver({ type: "pong", ts: "t", nonce: sent?.nonce });
    await expect(rtt).resolves.toBe(42);
  });

  it("ping rejects after the timeout and over SSE", async () => {
    const { client } = start();
    await flush();
    await openWebSocket();
    const late = client.ping(1000);
    const assertion = expect(late).rejects.toThrow("timed out");
    await vi.advanceTimersByTimeAsync(1000);
    await assertion;
    const sse = start({ transports: ["sse"] }).client;
    await flush();
    await expect(sse.ping()).rejects.toThrow("WebSocket");
  });

  it("subscribe and unsubscribe send messages over WebSocket and shape the next connect", async () => {
    const { client } = start({ events: ["task_created"] });
    await flush();
    await openWebSocket();
    client.subscribe(["task_deleted"]);
    client.unsubscribe(["task_created"]);
    expect(FakeWebSocket.last.messages).toEqual([
      { type: "subscribe", events: ["task_deleted"] },
      { type: "unsubscribe", events: ["task_created"] },
    ]);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1500);
    expect(FakeWebSocket.last.query.get("events")).toBe("task_deleted");
  });

  it("unsubscribe while receiving everything filters locally and sends nothing", async () => {
    const { client } = start();
    const seen: string[] = [];
    client.on("*", (event) => seen.push(event.type));
    await flush();
    await openWebSocket();
    client.unsubscribe(["task_updated"]);
    FakeWebSocket.last.deliver({ id: "1", type: "task_updated", ts: "t", taskId: 1 });
    FakeWebSocket.last.deliver({ id: "2", type: "task_deleted", ts: "t", taskId: 1 });
    expect(FakeWebSocket.last.sent).toEqual([]);
    expect(seen).toEqual(["connected", "task_deleted"]);
    expect(client.lastEventId).toBe("2");
  });

  it("subscribe over SSE reconnects with the new `events=` and the last id", async () => {
    const { client } = start({ transports: ["sse"], events: ["task_created"] });
    await flush();
    FakeEventSource.last.accept();
    FakeEventSource.last.deliver("task_created", { id: "5", type: "task_created", ts: "t" }, "5");
    client.subscribe(["schedule_updated"]);
    await flush();
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.instances[0]?.readyState).toBe(2);
    expect(FakeEventSource.last.query.get("events")).toBe("task_created,schedule_updated");
    expect(FakeEventSource.last.query.get("last_event_id")).toBe("5");
  });

  it("answers `token_expiring` with an `auth` message carrying the new token", async () => {
    const tokens = ["t1", "t2"];
    const { client } = start({ getToken: () => tokens.shift() ?? "t2" });
    await flush();
    await openWebSocket();
    FakeWebSocket.last.deliver({ type: "token_expiring", expiresAt: "2026-11-25T19:01:00Z" });
    await flush();
    expect(FakeWebSocket.last.messages).toEqual([{ type: "auth", token: "t2" }]);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("open");
  });

  it("answers `token_expiring` over SSE by reconnecting with the new token", async () => {
    const tokens = ["t1", "t2"];
    start({ transports: ["sse"], getToken: () => tokens.shift() ?? "t2" });
    await flush();
    const source = FakeEventSource.last;
    source.accept();
    source.deliver("task_created", { id: "7", type: "task_created", ts: "t" }, "7");
    source.deliver("token_expiring", { type: "token_expiring", expiresAt: 1 });
    await flush();
    expect(source.readyState).toBe(2);
    expect(FakeEventSource.last.query.get("token")).toBe("t2");
    expect(FakeEventSource.last.query.get("last_event_id")).toBe("7");
  });

  it("emits `resync` and `error` messages to listeners", async () => {
    const { client } = start();
    const seen: string[] = [];
    client.on("resync", (event) => seen.push(`resync:${event.reason}`));
    client.on("error", (event) => seen.push(`error:${event.code}`));
    await flush();
    await openWebSocket();
    FakeWebSocket.last.deliver({ type: "resync", reason: "history expired" });
    FakeWebSocket.last.deliver({ type: "error", code: "bad_message", message: "no" });
    expect(seen).toEqual(["resync:history expired", "error:bad_message"]);
  });

  it("a throwing listener does not stop delivery to others", async () => {
    const { client } = start();
    const seen: string[] = [];
    const onUncaught = vi.fn();
    process.on("uncaughtException", onUncaught);
    client.on("task_deleted", () => {
      throw new Error("listener bug");
    });
    client.on("task_deleted", () => seen.push("second"));
    await flush();
    await openWebSocket();
    FakeWebSocket.last.deliver({ id: "1", type: "task_deleted", ts: "t", taskId: 1 });
    await flush();
    process.off("uncaughtException", onUncaught);
    expect(seen).toEqual(["second"]);
  });
});

describe("liveness", () => {
  const LIVENESS_PING = { type: "ping", nonce: "liveness" };

  it("sends a liveness ping only after a heartbeat window without messages", async () => {
    start();
    await flush();
    const socket = FakeWebSocket.last;
    await openWebSocket(socket, { heartbeatSeconds: 5 });
    await vi.advanceTimersByTimeAsync(4999);
    expect(socket.sent).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.messages).toEqual([LIVENESS_PING]);
  });

  it("sends no ping while messages keep arriving", async () => {
    const { client } = start();
    await flush();
    const socket = FakeWebSocket.last;
    await openWebSocket(socket, { heartbeatSeconds: 5 });
    for (let i = 1; i <= 6; i += 1) {
      await vi.advanceTimersByTimeAsync(4000);
      socket.deliver({ id: String(i), type: "task_updated", ts: "t", taskId: i });
    }
    await vi.advanceTimersByTimeAsync(4999);
    expect(socket.sent).toEqual([]);
    expect(socket.closedWith).toBeNull();
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("open");
  });

  it("without an answer closes the socket and reconnects with last_event_id of the last event", async () => {
    const { client } = start();
    await flush();
    const socket = FakeWebSocket.last;
    await openWebSocket(socket, { heartbeatSeconds: 5 });
    socket.deliver({ id: "0000000a00000006", type: "task_created", ts: "t", taskId: 1, title: "a" });
    socket.deliver({ id: "0000000a00000007", type: "task_executed", ts: "t", taskId: 1 });
    await vi.advanceTimersByTimeAsync(5000);
    expect(socket.messages).toEqual([LIVENESS_PING]);
    await vi.advanceTimersByTimeAsync(4999);
    expect(socket.closedWith).toBeNull();
    expect(client.status).toBe("open");
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.readyState).toBe(FakeWebSocket.CLOSED);
    expect(client.status).toBe("reconnecting");
    await untilSocket(2);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last.query.get("last_event_id")).toBe("0000000a00000007");
  });

  it("keeps the liveness pong from `pong` listeners, and the answer keeps the connection", async () => {
    const { client } = start();
    const pongs: unknown[] = [];
    const all: string[] = [];
    client.on("pong", (event) => pongs.push(event.nonce));
    client.on("*", (event) => all.push(event.type));
    await flush();
    const socket = FakeWebSocket.last;
    await openWebSocket(socket, { heartbeatSeconds: 5 });
    await vi.advanceTimersByTimeAsync(5000);
    expect(socket.messages).toEqual([LIVENESS_PING]);
    socket.deliver({ type: "pong", ts: "t", nonce: "liveness" });
    expect(pongs).toEqual([]);
    expect(all).toEqual(["connected"]);
    await vi.advanceTimersByTimeAsync(4999); // the answer restarted the window: no drop
    expect(socket.closedWith).toBeNull();
    expect(FakeWebSocket.instances).toHaveLength(1);
    socket.deliver({ type: "pong", ts: "t", nonce: "someone-else" });
    expect(pongs).toEqual(["someone-else"]); // other pongs still reach listeners
    expect(client.status).toBe("open");
  });

  it("`silenceMs: 0` turns the check off", async () => {
    const { client } = start({ reconnect: { silenceMs: 0 } });
    await flush();
    const socket = FakeWebSocket.last;
    await openWebSocket(socket, { heartbeatSeconds: 5 });
    await vi.advanceTimersByTimeAsync(60_000);
    expect(socket.sent).toEqual([]);
    expect(socket.closedWith).toBeNull();
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.status).toBe("open");
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe("close()", () => {
  it("closes the socket, cancels timers and stops listening to the window", async () => {
    const { client, options } = start();
    await flush();
    await openWebSocket();
    const socket = FakeWebSocket.last;
    const statuses: Status[] = [];
    client.onStatus(({ status }) => statuses.push(status));
    client.close();
    expect(socket.closedWith).toBe(1000);
    expect(client.status).toBe("closed");
    expect(client.transport).toBeNull();
    expect(statuses).toEqual(["closed"]);
    expect(vi.getTimerCount()).toBe(0);
    options.window.dispatchEvent(new Event("online"));
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("during a pending backoff leaves nothing scheduled", async () => {
    const { client } = start();
    await flush();
    FakeWebSocket.last.fail();
    expect(vi.getTimerCount()).toBe(1);
    client.close();
    expect(vi.getTimerCount()).toBe(0);
  });

  it("while getToken is pending opens nothing afterwards", async () => {
    let release: (token: string) => void = () => undefined;
    const { client } = start({ getToken: () => new Promise<string>((resolve) => (release = resolve)) });
    client.close();
    release("late");
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it("reconnect() starts again after close()", async () => {
    const { client } = start();
    await flush();
    client.close();
    client.reconnect();
    expect(client.status).toBe("connecting");
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
  });
});
