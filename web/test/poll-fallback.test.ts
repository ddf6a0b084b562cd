import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createRealtimeClient, type RealtimeClient } from "../src/client";
import type { RealtimeEvent } from "../src/events";
import {
  FakeEventSource,
  FakeWebSocket,
  type FakeResponse,
  type FetchCall,
  MemoryStorage,
  connectedMessage,
  fakeFetch,
  fakeOptions,
  flush,
} from "./fakes";

const KEY = "realtime.transport:http://svc.test";

/** A `/poll` endpoint the test answers one request at a time. */
class PollServer {
  pending: { call: FetchCall; answer: (response: FakeResponse | Error) => void }[] = [];
  readonly fetch = fakeFetch(
    (call) =>
      new Promise<FakeResponse | Error>((answer) => {
        this.pending.push({ call, answer });
      }),
  );

  get calls(): FetchCall[] {
    return this.fetch.calls;
  }

  /** Answer the oldest waiting poll. */
  async answer(response: FakeResponse | Error): Promise<FetchCall> {
    const next = this.pending.shift();
    if (!next) throw new Error("no poll is waiting");
    next.answer(response);
    await flush();
    return next.call;
  }

  async connected(cursor = "c0"): Promise<FetchCall> {
    return this.answer({
      status: 200,
      body: { messages: [connectedMessage({ transport: "poll", heartbeatSeconds: 25 })], cursor },
    });
  }
}

let clients: RealtimeClient[] = [];
let server: PollServer;

function start(overrides: Parameters<typeof fakeOptions>[0] = {}) {
  const options = fakeOptions({ fetchImpl: server.fetch.impl, ...overrides });
  const client = createRealtimeClient(options);
  clients.push(client);
  return { client, options };
}

/** WebSocket fails twice (a proxy refusing the upgrade), then SSE gets created. */
async function failWebSocket(): Promise<void> {
  await flush();
  FakeWebSocket.last.fail();
  await vi.advanceTimersByTimeAsync(1500);
  FakeWebSocket.last.fail();
  await flush();
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  FakeWebSocket.reset();
  FakeEventSource.reset();
  server = new PollServer();
});

afterEach(() => {
  for (const client of clients) client.close();
  clients = [];
  vi.useRealTimers();
});

describe("long-polling fallback", () => {
  it("moves to polling when SSE opens but `connected` never arrives, and remembers it", async () => {
    const storage = new MemoryStorage();
    const { client } = start({ storage });
    await failWebSocket();
    FakeEventSource.last.accept(); // a buffering proxy may send the head and hold the rest
    await vi.advanceTimersByTimeAsync(2999);
    expect(server.pending).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1);
    await flush();
    expect(FakeEventSource.last.readyState).toBe(2);
    const call = await server.connected();
    expect(call.url).toBe("http://svc.test/poll");
    expect(call.headers.Authorization).toBe("Bearer token-1");
    expect(client.status).toBe("open");
    expect(client.transport).toBe("poll");
    expect(storage.getItem(KEY)?.startsWith("poll@")).toBe(true);
  });

  it("moves to polling when SSE never even opens", async () => {
    const { client } = start();
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.connected();
    expect(client.transport).toBe("poll");
  });

  it("polls on from each cursor, delivering events in order, without a token in the URL", async () => {
    const { client } = start({ storage: new MemoryStorage() });
    const seen: RealtimeEvent[] = [];
    client.on("*", (event) => seen.push(event));
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.connected("c0");
    const second = await server.answer({
      status: 200,
      body: { messages: [{ type: "note", id: "e1", ts: "t" }, { type: "note", id: "e2", ts: "t" }], cursor: "e2" },
    });
    expect(new URL(second.url).searchParams.get("cursor")).toBe("c0");
    const third = await server.answer({ status: 200, body: { messages: [], cursor: "e5" } });
    expect(new URL(third.url).searchParams.get("cursor")).toBe("e2");
    expect(new URL(server.pending[0]?.call.url ?? "").searchParams.get("cursor")).toBe("e5");
    expect(server.calls.every((call) => !call.url.includes("token"))).toBe(true);
    expect(seen.map((event) => event.type)).toEqual(["connected", "note", "note"]);
    expect(client.lastEventId).toBe("e5");
  });

  it("starts with polling when it was remembered, and tries WebSocket again later", async () => {
    const storage = new MemoryStorage();
    storage.setItem(KEY, `poll@${Date.now()}`);
    const { client } = start({ storage, reconnect: { upgradeAfterMs: 60_000 } });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
    await server.connected();
    expect(client.transport).toBe("poll");
    client.close();

    storage.setItem(KEY, `poll@${Date.now() - 60_000}`);
    start({ storage, reconnect: { upgradeAfterMs: 60_000 } });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it("goes back to WebSocket when polling fails too (the server is down, not a proxy)", async () => {
    const storage = new MemoryStorage();
    start({ storage });
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.answer(new TypeError("failed to fetch"));
    for (let waited = 0; FakeWebSocket.instances.length < 3 && waited < 10_000; waited += 100) {
      await vi.advanceTimersByTimeAsync(100);
    }
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(storage.getItem(KEY)).toBeNull();
  });

  it("asks for a new token when a poll is refused with 401", async () => {
    let token = "token-1";
    const getToken = vi.fn(() => token);
    start({ getToken, storage: new MemoryStorage() });
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.connected();
    token = "token-2";
    await server.answer({ status: 401, body: { error: "unauthorized", reason: "token expired" } });
    await flush();
    expect(server.pending.at(-1)?.call.headers.Authorization).toBe("Bearer token-2");
  });

  it("stops on a `close` from the server that says stop (disconnected by an admin)", async () => {
    const { client } = start({ storage: new MemoryStorage() });
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.connected();
    await server.answer({ status: 200, body: { messages: [{ type: "close", code: 4000, reason: "bye" }], cursor: "c0" } });
    expect(client.status).toBe("closed");
    expect(client.reason).toBe("disconnected");
    expect(server.pending).toHaveLength(0);
  });

  it("polls again, resuming with the new filter, when the subscription changes", async () => {
    const { client } = start({ storage: new MemoryStorage(), events: ["task_created"] });
    await failWebSocket();
    await vi.advanceTimersByTimeAsync(3000);
    await flush();
    await server.connected("c0");
    expect(new URL(server.pending[0]?.call.url ?? "").searchParams.get("events")).toBe("task_created");
    client.subscribe(["note"]);
    await flush();
    const next = new URL(server.pending.at(-1)?.call.url ?? "").searchParams;
    expect(next.get("events")).toBe("task_created,note");
    expect(next.get("last_event_id")).toBe("c0");
    expect(next.get("cursor")).toBeNull();
  });
});
