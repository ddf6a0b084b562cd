/** Scriptable stand-ins for WebSocket, EventSource, fetch and browser storage. */

import type { RealtimeClientOptions } from "../src/client";

type Handler = ((event: never) => void) | null;

function call(handler: Handler, event: object): void {
  (handler as ((event: object) => void) | null)?.(event);
}

/** A WebSocket the test drives: `accept()`, `deliver()`, `serverClose()`, `fail()`. */
export class FakeWebSocket {
  static instances: FakeWebSocket[] = [];
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSING = 2;
  static readonly CLOSED = 3;

  readonly url: string;
  readyState = 0;
  sent: string[] = [];
  closedWith: number | null = null;
  onopen: Handler = null;
  onmessage: Handler = null;
  onerror: Handler = null;
  onclose: Handler = null;

  constructor(url: string) {
    this.url = url;
    FakeWebSocket.instances.push(this);
  }

  static reset(): void {
    FakeWebSocket.instances = [];
  }

  static get last(): FakeWebSocket {
    const socket = FakeWebSocket.instances.at(-1);
    if (!socket) throw new Error("no WebSocket was created");
    return socket;
  }

  /** Sockets neither side has closed. */
  static live(): FakeWebSocket[] {
    return FakeWebSocket.instances.filter((s) => s.readyState < 2);
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  get messages(): Record<string, unknown>[] {
    return this.sent.map((raw) => JSON.parse(raw) as Record<string, unknown>);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    this.sent.push(data);
  }

  close(code = 1000): void {
    if (this.readyState >= 2) return;
    this.readyState = 3;
    this.closedWith = code;
  }

  accept(): void {
    this.readyState = 1;
    call(this.onopen, { type: "open" });
  }

  deliver(message: object): void {
    call(this.onmessage, { type: "message", data: JSON.stringify(message) });
  }

  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    call(this.onclose, { type: "close", code, reason, wasClean: code !== 1006 });
  }

  /** The handshake or the network failed: error, then close 1006. */
  fail(): void {
    this.readyState = 3;
    call(this.onerror, { type: "error" });
    call(this.onclose, { type: "close", code: 1006, reason: "", wasClean: false });
  }
}

/** An EventSource the test drives: `accept()`, `deliver()` (named events), `fail()`. */
export class FakeEventSource {
  static instances: FakeEventSource[] = [];
  readonly url: string;
  readyState = 0;
  onopen: Handler = null;
  onmessage: Handler = null;
  onerror: Handler = null;
  private listeners = new Map<string, Set<(event: object) => void>>();

  constructor(url: string) {
    this.url = url;
    FakeEventSource.instances.push(this);
  }

  static reset(): void {
    FakeEventSource.instances = [];
  }

  static get last(): FakeEventSource {
    const source = FakeEventSource.instances.at(-1);
    if (!source) throw new Error("no EventSource was created");
    return source;
  }

  static live(): FakeEventSource[] {
    return FakeEventSource.instances.filter((s) => s.readyState !== 2);
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  addEventListener(type: string, listener: (event: object) => void): void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
  }

  removeEventListener(type: string, listener: (event: object) => void): void {
    this.listeners.get(type)?.delete(listener);
  }

  close(): void {
    this.readyState = 2;
  }

  accept(): void {
    this.readyState = 1;
    call(this.onopen, { type: "open" });
  }

  /** One `id:`/`event:`/`data:` block as the server writes it. */
  deliver(type: string, data: object, id = ""): void {
    const event = { type, data: JSON.stringify(data), lastEventId: id };
    if (type === "message") call(this.onmessage, event);
    else for (const listener of this.listeners.get(type) ?? []) listener(event);
  }

  fail(): void {
    this.readyState = 2;
    call(this.onerror, { type: "error" });
  }
}

export interface FakeResponse {
  status: number;
  body?: unknown;
}

export interface FetchCall {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
}

/**
 * A fetch answering from `route(call)`; the response resolves in microtasks only, so tests
 * with fake timers never wait on real I/O.
 */
export function fakeFetch(route: (call: FetchCall) => FakeResponse | Error | Promise<FakeResponse | Error>) {
  const calls: FetchCall[] = [];
  const impl = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const signal = init?.signal;
    if (signal?.aborted) throw new DOMException("aborted", "AbortError");
    const record: FetchCall = {
      url: String(input),
      method: init?.method ?? "GET",
      headers: { ...(init?.headers as Record<string, string> | undefined) },
      body: typeof init?.body === "string" ? JSON.parse(init.body) : null,
    };
    calls.push(record);
    const answer = await route(record);
    if (signal?.aborted) throw new DOMException("aborted", "AbortError");
    if (answer instanceof Error) throw answer;
    const text = answer.body === undefined ? "" : JSON.stringify(answer.body);
    return {
      status: answer.status,
      ok: answer.status >= 200 && answer.status < 300,
      json: async () => JSON.parse(text) as unknown,
      text: async () => text,
    } as Response;
  };
  return { impl: impl as typeof fetch, calls };
}

export class MemoryStorage {
  private items = new Map<string, string>();
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

export class FakeDocument extends EventTarget {
  visibilityState: "visible" | "hidden" = "visible";

  show(): void {
    this.visibilityState = "visible";
    this.dispatchEvent(new Event("visibilitychange"));
  }

  hide(): void {
    this.visibilityState = "hidden";
    this.dispatchEvent(new Event("visibilitychange"));
  }
}

/** Options for a client wired to the fakes; tickets off unless a test turns them on. */
export function fakeOptions(overrides: Partial<RealtimeClientOptions> = {}): RealtimeClientOptions & {
  window: EventTarget;
  document: FakeDocument;
  storage: MemoryStorage;
} {
  return {
    url: "http://svc.test",
    getToken: () => "token-1",
    ticketUrl: null,
    WebSocketImpl: FakeWebSocket,
    EventSourceImpl: FakeEventSource,
    random: () => 0.5,
    window: new EventTarget(),
    document: new FakeDocument(),
    storage: new MemoryStorage(),
    ...overrides,
  } as RealtimeClientOptions & { window: EventTarget; document: FakeDocument; storage: MemoryStorage };
}

/** Let pending promise callbacks run (getToken, the ticket request). */
export async function flush(): Promise<void> {
  for (let i = 0; i < 20; i += 1) await Promise.resolve();
}

export function connectedMessage(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: "connected",
    id: "conn-id-should-not-be-used",
    ts: "2026-11-25T19:00:00.000Z",
    connectionId: "c1",
    userId: 1,
    userName: "محمد حسن",
    transport: "websocket",
    serverTime: "2026-11-25T19:00:00.000Z",
    heartbeatSeconds: 15,
    resumed: false,
    ...overrides,
  };
}
