import { describe, expect, it } from "vitest";
import { ApiError, createApi, randomKey, retryDelay, type ApiOptions } from "../src/api";

interface Sent {
  method: string;
  url: string;
  headers: Record<string, string>;
}

type Reply = { status: number; body?: unknown; retryAfter?: string } | Error;

/** A fetch that answers from a script, one reply per send, and records what was sent. */
function scripted(replies: Reply[]) {
  const sent: Sent[] = [];
  const impl = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const headers = { ...(init?.headers as Record<string, string>) };
    sent.push({ method: init?.method ?? "GET", url: String(input), headers });
    const reply = replies.shift() ?? { status: 200, body: {} };
    if (reply instanceof Error) throw reply;
    const text = reply.body === undefined ? "" : JSON.stringify(reply.body);
    const answerHeaders = new Headers(reply.retryAfter === undefined ? {} : { "Retry-After": reply.retryAfter });
    const ok = reply.status >= 200 && reply.status < 300;
    return { status: reply.status, ok, headers: answerHeaders, text: async () => text } as Response;
  };
  return { impl: impl as typeof fetch, sent };
}

function api(replies: Reply[], extra: Partial<ApiOptions> = {}) {
  const fetch = scripted(replies);
  const waits: number[] = [];
  let n = 0;
  const client = createApi({
    url: "http://svc.test",
    getToken: () => "t",
    fetchImpl: fetch.impl,
    newKey: () => `key-${++n}`,
    sleep: async (ms) => {
      waits.push(ms);
    },
    ...extra,
  });
  return { client, sent: fetch.sent, waits };
}

const TASK = { title: "تقرير", taskType: "daily" as const };

describe("Idempotency-Key", () => {
  it("sends one key with each change and none with a read", async () => {
    const { client, sent } = api([
      { status: 201, body: { id: 1 } },
      { status: 200, body: { tasks: [], next: null } },
      { status: 204 },
    ]);
    await client.createTask(TASK);
    await client.listTasks();
    await client.deleteTask(1);
    expect(sent.map((s) => [s.method, s.headers["Idempotency-Key"]])).toEqual([
      ["POST", "key-1"],
      ["GET", undefined],
      ["DELETE", "key-2"],
    ]);
  });

  it("gives each user action its own key", async () => {
    const { client, sent } = api([{ status: 201, body: { id: 1 } }, { status: 201, body: { id: 2 } }]);
    await client.createTask(TASK);
    await client.createTask(TASK);
    expect(sent.map((s) => s.headers["Idempotency-Key"])).toEqual(["key-1", "key-2"]);
  });

  it("resends with the same key after a lost answer", async () => {
    const { client, sent } = api([new TypeError("Failed to fetch"), { status: 200, body: { id: 3, executions: 1 } }]);
    const task = await client.executeTask(3, { resultStatus: "completed" });
    expect(task).toEqual({ id: 3, executions: 1 });
    expect(sent.map((s) => s.headers["Idempotency-Key"])).toEqual(["key-1", "key-1"]);
  });

  it("resends with the same key after 503 and 409, waiting as Retry-After says", async () => {
    const { client, sent, waits } = api([
      { status: 503, body: { error: "unavailable" }, retryAfter: "2" },
      { status: 409, body: { error: "conflict" }, retryAfter: "1" },
      { status: 200, body: { id: 4 } },
    ]);
    await client.updateTask(4, { title: "x" });
    expect(sent.map((s) => [s.method, s.headers["Idempotency-Key"]])).toEqual([
      ["PATCH", "key-1"],
      ["PATCH", "key-1"],
      ["PATCH", "key-1"],
    ]);
    expect(waits).toEqual([2000, 1000]);
  });

  it("gives up after the configured retries with the last answer", async () => {
    const { client, sent } = api(Array.from({ length: 5 }, () => ({ status: 503, body: { error: "unavailable" } })), {
      retries: 2,
    });
    await expect(client.createTask(TASK)).rejects.toMatchObject({ status: 503 });
    expect(sent).toHaveLength(3);
  });

  it("does not resend an answer that is final (400, 422)", async () => {
    const { client, sent } = api([{ status: 422, body: { error: "unprocessable_entity" } }]);
    const error = await client.createTask(TASK).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(422);
    expect(sent).toHaveLength(1);
  });

  it("does not resend a cancelled request or a failed read", async () => {
    const abort = new DOMException("aborted", "AbortError");
    const cancelled = api([abort]);
    await expect(cancelled.client.createTask(TASK)).rejects.toBe(abort);
    expect(cancelled.sent).toHaveLength(1);
    const read = api([new TypeError("Failed to fetch")]);
    await expect(read.client.listTasks()).rejects.toBeInstanceOf(TypeError);
    expect(read.sent).toHaveLength(1);
  });
});

describe("retryDelay", () => {
  it("doubles from 0.5 s without Retry-After, capped at 5 s, and honours Retry-After", () => {
    expect([1, 2, 3, 4, 5].map((a) => retryDelay(a, null))).toEqual([500, 1000, 2000, 4000, 5000]);
    expect(retryDelay(1, "3")).toBe(3000);
    expect(retryDelay(1, "60")).toBe(5000);
    expect(retryDelay(2, "soon")).toBe(1000);
  });
});

describe("randomKey", () => {
  it("makes distinct keys the service accepts (visible ASCII, at most 255)", () => {
    const keys = new Set(Array.from({ length: 100 }, randomKey));
    expect(keys.size).toBe(100);
    for (const key of keys) expect(key).toMatch(/^[0-9a-f]{32}$/);
  });
});
