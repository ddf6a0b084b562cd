/**
 * The realtime client: WebSocket first, SSE when WebSocket cannot open, long-polling when SSE
 * stays silent (a proxy that buffers streams); reconnects with backoff and resumes from the
 * last event id. No framework; usable on its own.
 */

import { DEFAULT_BACKOFF, backoffDelay } from "./backoff";
import { CloseCode, closeAction, type StopReason } from "./close-codes";
import { CONTROL_TYPES, type EventMap, KNOWN_TYPES, type RealtimeEvent, type TransportName } from "./events";
import { endpoint, resolveBase, webSocketUrl } from "./urls";
import { TOKEN_EVENT } from "./token-store";
import type { EventSourceConstructor, EventSourceLike, WebSocketConstructor, WebSocketLike } from "./transport-impl";

export type Status = "connecting" | "open" | "reconnecting" | "closed";
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

export interface ReconnectOptions {
  /** First backoff ceiling in ms (default 1000). */
  baseMs?: number;
  /** Largest backoff ceiling in ms (default 5000): the longest wait between two attempts. */
  capMs?: number;
  /**
   * Flapping guard: a connection that ends within this long of `connected` (default 1000)
   * does not reset the backoff, so a server that accepts and drops at once is not hammered.
   * Any connection that held longer resets it, however soon the next outage comes.
   */
  stableMs?: number;
  /** A transport that has not opened by then counts as failed (default 10000). */
  openTimeoutMs?: number;
  /**
   * SSE must deliver `connected` within this long (default 3000), else the client moves to
   * long-polling: a proxy that buffers streams holds even the response head back.
   */
  connectedTimeoutMs?: number;
  /**
   * A remembered fallback (SSE or polling) is tried upward again, from WebSocket, on a
   * (re)connect this long after it was chosen (default 600000, ten minutes).
   */
  upgradeAfterMs?: number;
  /**
   * WebSocket liveness: after this long without a message the client sends a `ping`, and
   * after as long again without any answer it drops the connection and reconnects. Default:
   * the server's `heartbeatSeconds` (from `connected`); `0` turns the check off.
   */
  silenceMs?: number;
}

export interface RealtimeClientOptions {
  /** Service base URL (`https://host`, `wss://host/ws`); default: the page's origin. */
  url?: string;
  /** Returns the current JWT; called again on 4401 and on `token_expiring`. */
  getToken: TokenSource;
  /** Allowed transports in order of preference (default `["websocket", "sse", "poll"]`). */
  transports?: readonly TransportName[];
  /** Event types to receive (default: all). */
  events?: readonly string[];
  /** `false` never reconnects; an object tunes the backoff. */
  reconnect?: boolean | ReconnectOptions;
  /**
   * One-time ticket endpoint (default `/api/realtime/ticket`). `null` opts in to sending the
   * token itself as `?token=` (it then shows in browser consoles and proxy logs). Without
   * `null` the token goes into a URL only when the endpoint answers 404 or 405 (a server
   * without tickets); when it cannot be reached, the client waits and asks again.
   */
  ticketUrl?: string | null;
  /**
   * The WebSocket class (default: the global one). Node 20 has none: pass the `ws` package's
   * (`import WebSocket from "ws"`); any class with the members of `WebSocketLike` fits.
   */
  WebSocketImpl?: WebSocketConstructor;
  /** The EventSource class (default: the global one; Node has none); see `EventSourceLike`. */
  EventSourceImpl?: EventSourceConstructor;
  fetchImpl?: typeof fetch;
  /** Where the SSE or polling fallback is remembered (default `sessionStorage`; `null`: nowhere). */
  storage?: Pick<Storage, "getItem" | "setItem"> | null;
  /** Source of `online` events and `storeToken`'s `realtime-token` (default `window`). */
  window?: Pick<EventTarget, "addEventListener" | "removeEventListener"> | null;
  /** Source of `visibilitychange` (default `document`). */
  document?: (Pick<EventTarget, "addEventListener" | "removeEventListener"> & { visibilityState: string }) | null;
  /** Random source in [0, 1) for the jitter (default `Math.random`). */
  random?: () => number;
}

export interface StatusInfo {
  status: Status;
  transport: TransportName | null;
  /** Why the client is `closed`, else null. */
  reason: StopReason | null;
}

export type Listener<E> = (event: E) => void;

export interface RealtimeClient {
  readonly status: Status;
  readonly transport: TransportName | null;
  readonly reason: StopReason | null;
  /** The id of the last event received; sent as `last_event_id` on reconnect. */
  readonly lastEventId: string | null;
  /**
   * The transports this client can use here, in order of preference: the wanted ones that have
   * an implementation (Node 20 without `WebSocketImpl`: `["poll"]`). A wanted transport left
   * out is also reported once per process with `console.warn`.
   */
  readonly transports: readonly TransportName[];
  /** Listen to one type, or to every message with `"*"`; returns the unsubscribe function. */
  on<K extends keyof EventMap>(type: K, listener: Listener<EventMap[K]>): () => void;
  on(type: string, listener: Listener<RealtimeEvent>): () => void;
  onStatus(listener: (info: StatusInfo) => void): () => void;
  /** Send a message over an open WebSocket; false when there is none. */
  send(message: object | string): boolean;
  /** Round trip in ms, measured with `ping`/`pong` over WebSocket. */
  ping(timeoutMs?: number): Promise<number>;
  subscribe(types: readonly string[]): void;
  unsubscribe(types: readonly string[]): void;
  /** Connect now: skips a pending backoff, or starts again after `closed`. */
  reconnect(): void;
  /**
   * The app's token may have changed (e.g. the user signed in): when closed for want of a
   * usable token, ask `getToken()` again and connect if it gives a new one; otherwise nothing.
   * `storeToken()` does this for every client on the page; the hooks on every render.
   */
  tokenChanged(): void;
  close(): void;
}

const FALLBACK_AFTER = 2; // WebSocket attempts that never opened before trying SSE
const POLL_MARGIN_MS = 10_000; // beyond the server's poll timeout before a poll counts as lost
const LIVENESS_NONCE = "liveness"; // pings sent by the silence check; their pongs stay internal
const WS_OPEN = 1;
const STORAGE_PREFIX = "realtime.transport:";

type Auth = { ticket: string } | { token: string };

interface PendingPing {
  sentAt: number;
  resolve: (ms: number) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export function createRealtimeClient(options: RealtimeClientOptions): RealtimeClient {
  const base = resolveBase(options.url);
  const wanted = options.transports?.length ? options.transports : (["websocket", "sse", "poll"] as const);
  const WebSocketImpl: WebSocketConstructor = options.WebSocketImpl ?? globalThis.WebSocket;
  const EventSourceImpl: EventSourceConstructor = options.EventSourceImpl ?? globalThis.EventSource;
  const fetchImpl = options.fetchImpl ?? (globalThis.fetch ? globalThis.fetch.bind(globalThis) : undefined);
  const wsAllowed = wanted.includes("websocket") && typeof WebSocketImpl === "function";
  const sseAllowed = wanted.includes("sse") && typeof EventSourceImpl === "function";
  const pollAllowed = wanted.includes("poll") && typeof fetchImpl === "function";
  const usable = wanted.filter(
    (name) => (name === "websocket" && wsAllowed) || (name === "sse" && sseAllowed) || (name === "poll" && pollAllowed),
  );
  const missing = wanted.filter((name) => !usable.includes(name));
  if (!usable.length) {
    throw new Error(`realtime client: no usable transport (${missing.map(implNeeded).join(", ")})`);
  }
  if (missing.length) warnOnce(`realtime client: ${missing.map(implNeeded).join(", ")}; using ${usable.join(", ")}`);
  if (options.ticketUrl !== null && !fetchImpl) {
    throw new Error("realtime client: tickets need fetch; pass fetchImpl, or ticketUrl: null to send ?token=");
  }

  const reconnectEnabled = options.reconnect !== false;
  const tuning = typeof options.reconnect === "object" ? options.reconnect : {};
  const backoff = { baseMs: tuning.baseMs ?? DEFAULT_BACKOFF.baseMs, capMs: tuning.capMs ?? DEFAULT_BACKOFF.capMs };
  const stableMs = tuning.stableMs ?? 1000;
  const openTimeoutMs = tuning.openTimeoutMs ?? 10_000;
  const connectedTimeoutMs = tuning.connectedTimeoutMs ?? 3000;
  const upgradeAfterMs = tuning.upgradeAfterMs ?? 600_000;
  const silenceOverride = tuning.silenceMs;
  const random = options.random ?? Math.random;
  const ticketUrl = options.ticketUrl === null ? null : endpoint(base, options.ticketUrl ?? "/api/realtime/ticket");
  const storage = options.storage === undefined ? defaultStorage() : options.storage;
  const win = options.window === undefined ? (typeof window === "undefined" ? null : window) : options.window;
  const doc = options.document === undefined ? (typeof document === "undefined" ? null : document) : options.document;
  const storageKey = STORAGE_PREFIX + base;

  let status: Status = "connecting";
  let transport: TransportName | null = null;
  let stopReason: StopReason | null = null;
  let lastEventId: string | null = null;
  let token: string | null = null;
  let subscriptions: Set<string> | null = options.events?.length ? new Set(options.events) : null;
  const excluded = new Set<string>();
  // websocket: normal; sse-trial: WebSocket failed, SSE not yet proven; sse: proven (and
  // remembered); poll-trial: SSE stayed silent, polling not yet proven; poll: proven.
  let mode: Mode = initialMode();
  let fellBackAt = remembered(readStorage(storage, storageKey))?.at ?? Date.now(); // when a fallback was proven
  let attempt = 0; // consecutive failures, drives the backoff; 0 again at `connected`
  let heldAttempt = 0; // the streak before the last `connected`, kept if that connection did not last
  let connectedAt: number | null = null; // when the current connection said `connected`
  let wsFailures = 0; // consecutive WebSocket attempts that never opened
  let authFailures = 0; // consecutive 4401s answered with a new token
  let generation = 0; // bumped on every (re)start; stale async work checks it and gives up
  let socket: WebSocketLike | null = null;
  let source: EventSourceLike | null = null;
  let sourceTypes = new Set<string>();
  let aborter: AbortController | null = null;
  let retryTimer: ReturnType<typeof setTimeout> | null = null;
  let openTimer: ReturnType<typeof setTimeout> | null = null;
  let connectedTimer: ReturnType<typeof setTimeout> | null = null;
  let silenceTimer: ReturnType<typeof setTimeout> | null = null;
  let silenceMs = 0; // per connection, from `connected` (or the option)
  let pollWaitMs = 25_000; // how long the server holds a poll (from `connected`)
  let polling = false; // a poll loop runs for the current generation
  let pingCounter = 0;
  let windowListening = false;
  const pings = new Map<string, PendingPing>();
  const listeners = new Map<string, Set<Listener<RealtimeEvent>>>();
  const statusListeners = new Set<(info: StatusInfo) => void>();

  function initialMode(): Mode {
    const kept = remembered(readStorage(storage, storageKey));
    const fresh = kept !== null && Date.now() - kept.at < upgradeAfterMs;
    if (fresh && kept.mode === "poll" && pollAllowed) return "poll";
    if (fresh && kept.mode === "sse" && sseAllowed) return "sse";
    if (wsAllowed) return "websocket";
    return sseAllowed ? "sse" : "poll";
  }

  /** SSE or polling proved itself: use it from now on, and remember it for this base URL. */
  function proven(next: "sse" | "poll"): void {
    mode = next;
    fellBackAt = Date.now();
    writeStorage(storage, storageKey, `${next}@${fellBackAt}`);
  }

  function setStatus(next: Status, nextTransport: TransportName | null = transport): void {
    if (next === status && nextTransport === transport) return;
    status = next;
    transport = nextTransport;
    if (next !== "closed") stopReason = null;
    notifyStatus();
  }

  function notifyStatus(): void {
    const info: StatusInfo = { status, transport, reason: stopReason };
    for (const listener of [...statusListeners]) safely(listener, info);
  }

  function emit(event: RealtimeEvent): void {
    for (const key of [event.type, "*"]) {
      const set = listeners.get(key);
      if (!set) continue;
      for (const listener of [...set]) safely(listener, event);
    }
  }

  function clearTimer(timer: ReturnType<typeof setTimeout> | null): null {
    if (timer !== null) clearTimeout(timer);
    return null;
  }

  /** Detach and close the current transport without reporting its close. */
  function dropTransport(): void {
    openTimer = clearTimer(openTimer);
    connectedTimer = clearTimer(connectedTimer);
    silenceTimer = clearTimer(silenceTimer);
    silenceMs = 0;
    polling = false;
    aborter?.abort();
    aborter = null;
    if (socket) {
      const ws = socket;
      socket = null;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      if (ws.readyState <= WS_OPEN) ws.close(CloseCode.NORMAL);
    }
    if (source) {
      const es = source;
      source = null;
      es.onopen = es.onmessage = es.onerror = null;
      es.close();
    }
    rejectPings("connection closed");
  }

  function rejectPings(message: string): void {
    for (const [nonce, ping] of pings) {
      clearTimeout(ping.timer);
      pings.delete(nonce);
      ping.reject(new Error(message));
    }
  }

  function start(tokenHint?: string): void {
    retryTimer = clearTimer(retryTimer);
    dropTransport();
    const gen = ++generation;
    setStatus(status === "open" || status === "reconnecting" ? "reconnecting" : "connecting");
    void run(gen, tokenHint);
  }

  async function run(gen: number, tokenHint?: string): Promise<void> {
    let current: string | null;
    if (tokenHint !== undefined) {
      current = tokenHint;
    } else {
      try {
        current = (await options.getToken()) ?? null;
      } catch {
        if (gen === generation) failed(gen, CloseCode.ABNORMAL);
        return;
      }
    }
    if (gen !== generation) return;
    if (!current) {
      stop("unauthorized");
      return;
    }
    token = current;
    if ((mode === "sse" || mode === "poll") && wsAllowed && Date.now() - fellBackAt >= upgradeAfterMs) {
      mode = "websocket"; // the proxy may have changed: try upward again
      wsFailures = 0;
    }
    if (mode === "poll" || mode === "poll-trial") {
      openPoll(gen); // authenticated like REST, by header: no ticket needed
      return;
    }
    const auth = await authorize(current);
    if (gen !== generation) return;
    if (auth === "unauthorized") {
      void reauthorize(gen);
      return;
    }
    if (auth === "unreachable") {
      failed(gen, CloseCode.ABNORMAL); // no ticket, and no token in a URL either: wait and ask again
      return;
    }
    if (mode === "websocket") openWebSocket(gen, auth);
    else openEventSource(gen, auth);
  }

  /**
   * A one-time ticket for the token. The token itself goes into the URL only when the app
   * opted in (`ticketUrl: null`) or the server says it has no tickets (404, 405); a network
   * failure, a timeout or any other answer is `unreachable`: retry later, with backoff.
   */
  async function authorize(current: string): Promise<Auth | "unauthorized" | "unreachable"> {
    if (!ticketUrl || !fetchImpl) return { token: current };
    const mine = typeof AbortController === "function" ? new AbortController() : null;
    aborter = mine;
    // A ticket request that hangs must not hang the connection: give up and retry later.
    const timer = setTimeout(() => mine?.abort(), openTimeoutMs);
    try {
      const response = await fetchImpl(ticketUrl, {
        method: "POST",
        headers: { Authorization: `Bearer ${current}` },
        signal: mine?.signal ?? null,
      });
      if (response.status === 401) return "unauthorized";
      if (response.status === 404 || response.status === 405) return { token: current };
      if (response.ok) {
        const body: unknown = await response.json();
        if (isRecord(body) && typeof body.ticket === "string" && body.ticket) return { ticket: body.ticket };
      }
    } catch {
      // Network failure, timeout or a body that is not JSON: the service is not answering yet.
    } finally {
      clearTimeout(timer);
      if (aborter === mine) aborter = null;
    }
    return "unreachable";
  }

  function query(auth: Auth): Record<string, string> {
    const params: Record<string, string> = { ...auth };
    if (lastEventId) params.last_event_id = lastEventId;
    if (subscriptions?.size) params.events = [...subscriptions].join(",");
    return params;
  }

  function armOpenTimer(gen: number, onTimeout: () => void): void {
    openTimer = setTimeout(() => {
      openTimer = null;
      if (gen === generation) onTimeout();
    }, openTimeoutMs);
  }

  function opened(): void {
    openTimer = clearTimer(openTimer);
  }

  function openWebSocket(gen: number, auth: Auth): void {
    setStatus(status, "websocket");
    let ws: WebSocketLike;
    try {
      ws = new WebSocketImpl(webSocketUrl(base, query(auth)));
    } catch {
      ended(gen, "websocket", false, CloseCode.ABNORMAL);
      return;
    }
    socket = ws;
    let isOpen = false;
    armOpenTimer(gen, () => {
      // Never opening (a proxy that swallows the upgrade) means: use SSE now.
      wsFailures = Math.max(wsFailures, FALLBACK_AFTER - 1);
      dropTransport();
      ended(gen, "websocket", false, CloseCode.ABNORMAL);
    });
    ws.onopen = () => {
      if (socket !== ws) return;
      isOpen = true;
      wsFailures = 0;
      opened();
    };
    ws.onmessage = (message) => {
      if (socket === ws && typeof message.data === "string") received(message.data);
    };
    ws.onerror = () => {
      // Always followed by `close`, which carries the code.
    };
    ws.onclose = (close) => {
      if (socket !== ws) return;
      socket = null;
      ended(gen, "websocket", isOpen, close.code);
    };
  }

  function openEventSource(gen: number, auth: Auth): void {
    setStatus(status, "sse");
    let es: EventSourceLike;
    try {
      es = new EventSourceImpl(endpoint(base, "/events", query(auth)));
    } catch {
      ended(gen, "sse", false, CloseCode.ABNORMAL);
      return;
    }
    source = es;
    sourceTypes = new Set();
    let isOpen = false;
    armOpenTimer(gen, () => {
      dropTransport();
      ended(gen, "sse", false, CloseCode.ABNORMAL);
    });
    if (pollAllowed) {
      // A buffering proxy holds the stream (often its head too): no `connected` means polling.
      connectedTimer = setTimeout(() => {
        connectedTimer = null;
        if (gen !== generation || source !== es) return;
        dropTransport();
        mode = "poll-trial";
        start();
      }, connectedTimeoutMs);
    }
    es.onopen = () => {
      if (source !== es) return;
      isOpen = true;
      opened();
    };
    es.onmessage = (message) => {
      if (source === es) received(String(message.data), message.lastEventId);
    };
    // SSE dispatches `event: <type>` blocks only to listeners of that exact name.
    for (const type of sseTypes()) listenSse(es, type);
    es.addEventListener("close", (message) => {
      if (source !== es) return;
      const data = parseJson(message.data);
      const code = isRecord(data) && typeof data.code === "number" ? data.code : CloseCode.NORMAL;
      dropTransport();
      ended(gen, "sse", true, code);
    });
    // EventSource would retry on its own with a used ticket and no backoff: take over.
    es.onerror = () => {
      if (source !== es) return;
      dropTransport();
      ended(gen, "sse", isOpen, CloseCode.ABNORMAL);
    };
  }

  /**
   * Long-polling: each `GET /poll` is a complete JSON answer, so no buffering proxy can hold
   * it back. The first carries `last_event_id` (a connect, answered with `connected`); the
   * next ones carry the answer's cursor and wait on the server until events or its timeout.
   */
  function openPoll(gen: number): void {
    setStatus(status, "poll");
    void pollLoop(gen);
  }

  async function pollLoop(gen: number): Promise<void> {
    polling = true;
    let cursor: string | null = null;
    let isOpen = false;
    while (gen === generation) {
      const params: Record<string, string> = {};
      if (cursor !== null) params.cursor = cursor;
      else if (lastEventId) params.last_event_id = lastEventId;
      if (subscriptions?.size) params.events = [...subscriptions].join(",");
      const mine = typeof AbortController === "function" ? new AbortController() : null;
      aborter = mine;
      // Past the server's wait plus a margin, the answer is lost (a proxy that dropped it).
      const waitMs = (cursor === null ? 0 : pollWaitMs) + openTimeoutMs + POLL_MARGIN_MS;
      const timer = setTimeout(() => mine?.abort(), waitMs);
      let code: number | null = null;
      let body: unknown = null;
      try {
        const response = await (fetchImpl as typeof fetch)(endpoint(base, "/poll", params), {
          headers: { Authorization: `Bearer ${token ?? ""}` },
          cache: "no-store",
          signal: mine?.signal ?? null,
        });
        if (response.status === 401) code = CloseCode.UNAUTHORIZED;
        else if (response.status === 403) code = CloseCode.FORBIDDEN;
        else if (response.status === 429) code = CloseCode.TOO_MANY_CONNECTIONS;
        else if (response.status === 503) code = CloseCode.SERVICE_RESTART;
        else if (!response.ok) code = CloseCode.ABNORMAL;
        else body = await response.json();
      } catch {
        code = CloseCode.ABNORMAL; // network failure, timeout, or a body that is not JSON
      } finally {
        clearTimeout(timer);
        if (aborter === mine) aborter = null;
      }
      if (gen !== generation) return;
      if (code === null && (!isRecord(body) || !Array.isArray(body.messages))) code = CloseCode.ABNORMAL;
      if (code !== null) {
        ended(gen, "poll", isOpen, code);
        return;
      }
      const answer = body as { messages: unknown[]; cursor?: unknown };
      for (const message of answer.messages) {
        if (!isRecord(message) || typeof message.type !== "string") continue;
        if (message.type === "close") {
          ended(gen, "poll", true, typeof message.code === "number" ? message.code : CloseCode.NORMAL);
          return;
        }
        if (message.type === "connected") {
          isOpen = true;
          pollWaitMs = Number(message.heartbeatSeconds) > 0 ? Number(message.heartbeatSeconds) * 1000 : pollWaitMs;
        }
        handle(message as RealtimeEvent);
        if (gen !== generation) return; // a listener closed or restarted the client
      }
      if (typeof answer.cursor === "string" && answer.cursor) {
        cursor = answer.cursor;
        lastEventId = answer.cursor; // filtered events count as seen: resume from here
      } else if (cursor === null) {
        cursor = lastEventId ?? "";
      }
    }
  }

  function sseTypes(): Set<string> {
    const types = new Set<string>(KNOWN_TYPES);
    for (const type of subscriptions ?? []) types.add(type);
    for (const type of listeners.keys()) types.add(type);
    types.delete("*");
    types.delete("close");
    types.delete("message");
    return types;
  }

  function listenSse(es: EventSourceLike, type: string): void {
    if (sourceTypes.has(type) || type === "*" || type === "close" || type === "message") return;
    sourceTypes.add(type);
    es.addEventListener(type, (message) => {
      if (source !== es) return;
      const { data, lastEventId: sseId } = message;
      received(String(data), sseId, type);
    });
  }

  function received(raw: string, transportId?: string, sseType?: string): void {
    const parsed = parseJson(raw);
    if (!isRecord(parsed)) return;
    if (typeof parsed.type !== "string") {
      if (!sseType) return;
      parsed.type = sseType;
    }
    handle(parsed as RealtimeEvent, transportId);
  }

  function handle(event: RealtimeEvent, transportId?: string): void {
    if (event.type === "connected") {
      connectedTimer = clearTimer(connectedTimer);
      if (mode === "sse-trial" && source) proven("sse");
      else if (mode === "poll-trial" && transport === "poll") proven("poll");
      authFailures = 0;
      // The service took us back: the next drop starts from the first ceiling again.
      if (connectedAt === null) heldAttempt = attempt;
      attempt = 0;
      connectedAt = Date.now();
      silenceMs = silenceOverride ?? (Number(event.heartbeatSeconds) > 0 ? Number(event.heartbeatSeconds) * 1000 : 0);
      setStatus("open");
    } else if (status !== "open") {
      setStatus("open");
    }
    armSilence();
    if (event.type === "pong" && event.nonce === LIVENESS_NONCE) return;
    if (CONTROL_TYPES.has(event.type)) {
      if (event.type === "pong") settlePing(event.nonce);
      else if (event.type === "token_expiring") void refreshToken(generation);
    } else {
      const id = typeof event.id === "string" && event.id ? event.id : transportId;
      if (id) lastEventId = id;
      if ((subscriptions && !subscriptions.has(event.type)) || excluded.has(event.type)) return;
    }
    emit(event);
  }

  /**
   * A WebSocket whose peer froze or vanished without a FIN (a partition, a suspended host)
   * stays "open" in the browser, and protocol pings are invisible to scripts: after a quiet
   * `silenceMs` ask with a `ping`; no message for another `silenceMs` means the connection
   * is dead, so drop it and reconnect (resuming). Any message proves the connection alive.
   */
  function armSilence(): void {
    silenceTimer = clearTimer(silenceTimer);
    const ws = socket;
    if (!ws || silenceMs <= 0) return;
    const gen = generation;
    const wait = silenceMs;
    silenceTimer = setTimeout(() => {
      silenceTimer = null;
      if (gen !== generation || socket !== ws || ws.readyState !== WS_OPEN) return;
      ws.send(JSON.stringify({ type: "ping", nonce: LIVENESS_NONCE }));
      silenceTimer = setTimeout(() => {
        silenceTimer = null;
        if (gen !== generation || socket !== ws) return;
        dropTransport();
        ended(gen, "websocket", true, CloseCode.ABNORMAL);
      }, wait);
    }, wait);
  }

  function settlePing(nonce: unknown): void {
    const key = String(nonce);
    const ping = pings.get(key);
    if (!ping) return;
    pings.delete(key);
    clearTimeout(ping.timer);
    ping.resolve(Date.now() - ping.sentAt);
  }

  async function refreshToken(gen: number): Promise<void> {
    let next: string | null;
    try {
      next = (await options.getToken()) ?? null;
    } catch {
      return; // The server closes with 4401 at expiry; that path asks again.
    }
    if (gen !== generation || !next || next === token) return;
    token = next;
    if (socket && socket.readyState === WS_OPEN) {
      socket.send(JSON.stringify({ type: "auth", token: next }));
    } else if (source) {
      start(next); // SSE cannot send: reconnect with the new token, resuming.
    }
  }

  /** Closed with 4401 (or the ticket endpoint said 401): only a different token helps. */
  async function reauthorize(gen: number): Promise<void> {
    setStatus("reconnecting");
    const previous = token;
    let next: string | null;
    try {
      next = (await options.getToken()) ?? null;
    } catch {
      next = null;
    }
    if (gen !== generation) return;
    if (!next || next === previous) {
      stop("unauthorized");
      return;
    }
    authFailures += 1;
    if (authFailures === 1) start(next);
    else scheduleRetry(); // New tokens that keep failing: do not hammer the server.
  }

  function ended(gen: number, kind: TransportName, wasOpen: boolean, code: number): void {
    if (gen !== generation) return;
    dropTransport();
    if (!wasOpen) {
      if (kind === "websocket") {
        wsFailures += 1;
        if (wsFailures >= FALLBACK_AFTER && (sseAllowed || pollAllowed)) {
          mode = sseAllowed ? "sse-trial" : "poll-trial";
          start();
          return;
        }
      } else if (mode === "sse-trial" || mode === "poll-trial") {
        // SSE (or polling) failed too: the server is unreachable, not the WebSocket path.
        mode = wsAllowed ? "websocket" : sseAllowed ? "sse" : "poll";
        wsFailures = 0;
      }
    }
    failed(gen, code);
  }

  function failed(gen: number, code: number): void {
    if (gen !== generation) return;
    if (!reconnectEnabled) {
      stop("closed");
      return;
    }
    const decision = closeAction(code);
    if (decision.action === "stop") stop(decision.reason);
    else if (decision.action === "reauth") void reauthorize(gen);
    else scheduleRetry();
  }

  function scheduleRetry(): void {
    if (connectedAt !== null) {
      // A connection that ended soon after `connected` continues the streak it interrupted.
      if (Date.now() - connectedAt < stableMs) attempt = Math.max(attempt, heldAttempt);
      connectedAt = null;
    }
    const delay = backoffDelay(attempt, backoff, random);
    attempt += 1;
    setStatus("reconnecting");
    retryTimer = clearTimer(retryTimer);
    retryTimer = setTimeout(() => {
      retryTimer = null;
      start();
    }, delay);
  }

  function stop(reason: StopReason, nextTransport: TransportName | null = transport): void {
    generation += 1;
    retryTimer = clearTimer(retryTimer);
    dropTransport();
    const changed = status !== "closed" || stopReason !== reason || transport !== nextTransport;
    status = "closed";
    stopReason = reason;
    transport = nextTransport;
    if (changed) notifyStatus();
  }

  /** `online` or the page became visible: try now instead of waiting out the backoff. */
  function wake(): void {
    if (status === "reconnecting" && retryTimer !== null) {
      start();
    } else if (status === "closed" && stopReason === "unauthorized") {
      void recheckToken();
    }
  }

  async function recheckToken(): Promise<void> {
    const gen = generation;
    let next: string | null;
    try {
      next = (await options.getToken()) ?? null;
    } catch {
      return;
    }
    if (gen !== generation || status !== "closed" || !next || next === token) return;
    attempt = 0;
    connectedAt = null;
    authFailures = 0;
    start(next);
  }

  const onOnline = (): void => wake();
  const onToken = (): void => client.tokenChanged();
  const onVisibility = (): void => {
    if (doc?.visibilityState === "visible") wake();
  };

  function listenWindow(): void {
    if (windowListening) return;
    windowListening = true;
    win?.addEventListener("online", onOnline);
    win?.addEventListener(TOKEN_EVENT, onToken);
    doc?.addEventListener("visibilitychange", onVisibility);
  }

  function unlistenWindow(): void {
    if (!windowListening) return;
    windowListening = false;
    win?.removeEventListener("online", onOnline);
    win?.removeEventListener(TOKEN_EVENT, onToken);
    doc?.removeEventListener("visibilitychange", onVisibility);
  }

  const client: RealtimeClient = {
    get status() {
      return status;
    },
    get transport() {
      return transport;
    },
    get reason() {
      return stopReason;
    },
    get lastEventId() {
      return lastEventId;
    },
    transports: usable,
    on(type: string, listener: Listener<never>): () => void {
      const fn = listener as Listener<RealtimeEvent>;
      let set = listeners.get(type);
      if (!set) listeners.set(type, (set = new Set()));
      set.add(fn);
      if (source) listenSse(source, type);
      return () => {
        set.delete(fn);
      };
    },
    onStatus(listener) {
      statusListeners.add(listener);
      return () => {
        statusListeners.delete(listener);
      };
    },
    send(message) {
      if (!socket || socket.readyState !== WS_OPEN) return false;
      socket.send(typeof message === "string" ? message : JSON.stringify(message));
      return true;
    },
    ping(timeoutMs = 10_000) {
      const ws = socket;
      if (!ws || ws.readyState !== WS_OPEN) return Promise.reject(new Error("ping needs an open WebSocket"));
      pingCounter += 1;
      const nonce = `p${pingCounter}`;
      return new Promise<number>((resolve, reject) => {
        const timer = setTimeout(() => {
          pings.delete(nonce);
          reject(new Error("ping timed out"));
        }, timeoutMs);
        pings.set(nonce, { sentAt: Date.now(), resolve, reject, timer });
        ws.send(JSON.stringify({ type: "ping", nonce }));
      });
    },
    subscribe(types) {
      if (!types.length) return;
      for (const type of types) excluded.delete(type);
      subscriptions = new Set([...(subscriptions ?? []), ...types]);
      changeSubscription("subscribe", types);
    },
    unsubscribe(types) {
      if (!types.length) return;
      if (!subscriptions) {
        // Receiving everything: the server can only narrow explicit subscriptions
        // (it answers `error` otherwise), so filter here.
        for (const type of types) excluded.add(type);
        return;
      }
      for (const type of types) subscriptions.delete(type);
      if (!subscriptions.size) {
        // An empty `events=` would mean "everything" on the next connect: filter here too.
        subscriptions = null;
        for (const type of types) excluded.add(type);
      }
      changeSubscription("unsubscribe", types);
    },
    reconnect() {
      if (status === "closed") {
        attempt = 0;
        connectedAt = null;
        authFailures = 0;
        listenWindow();
      }
      start();
    },
    tokenChanged() {
      if (status === "closed" && stopReason === "unauthorized") void recheckToken();
    },
    close() {
      unlistenWindow();
      stop("closed", null);
    },
  };

  function changeSubscription(kind: "subscribe" | "unsubscribe", types: readonly string[]): void {
    if (socket && socket.readyState === WS_OPEN) {
      socket.send(JSON.stringify({ type: kind, events: [...types] }));
    } else if (source || polling) {
      // SSE filters are fixed per request, and a waiting poll's too (its cursor would pass
      // events of a newly wanted type): reconnect, resuming, with the new filter.
      start(token ?? undefined);
    }
  }

  listenWindow();
  start();
  return client;
}

type Mode = "websocket" | "sse-trial" | "sse" | "poll-trial" | "poll";

/** A remembered fallback: `sse@<ms>` or `poll@<ms>` (a bare `sse` from older versions counts as now). */
function remembered(value: string | null): { mode: "sse" | "poll"; at: number } | null {
  if (!value) return null;
  const [kept, at] = value.split("@");
  if (kept !== "sse" && kept !== "poll") return null;
  const when = at === undefined ? Date.now() : Number(at);
  return Number.isFinite(when) ? { mode: kept, at: when } : null;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** What a transport without an implementation would have needed, for the one-time warning. */
function implNeeded(name: TransportName): string {
  if (name === "websocket") return "no WebSocket (pass WebSocketImpl, e.g. the ws package in Node 20)";
  if (name === "sse") return "no EventSource (pass EventSourceImpl)";
  return "no fetch for long-polling (pass fetchImpl)";
}

const warned = new Set<string>();

/**
 * A transport the caller wanted (or the default list named) has no implementation here: say so
 * once per process and message, not on every client, so that a silent downgrade to long-polling
 * (Node 20 has fetch but no WebSocket) is visible. `transports: ["poll"]` asks for no warning.
 */
function warnOnce(message: string): void {
  if (warned.has(message)) return;
  warned.add(message);
  console.warn(message);
}

function parseJson(raw: unknown): unknown {
  if (typeof raw !== "string") return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return undefined;
  }
}

function safely<T>(fn: (value: T) => void, value: T): void {
  try {
    fn(value);
  } catch (error) {
    // A broken listener must not break delivery to the others; surface it asynchronously.
    queueMicrotask(() => {
      throw error;
    });
  }
}

function defaultStorage(): Pick<Storage, "getItem" | "setItem"> | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null; // Storage access can throw (privacy modes, sandboxed frames).
  }
}

function readStorage(storage: Pick<Storage, "getItem"> | null, key: string): string | null {
  try {
    return storage?.getItem(key) ?? null;
  } catch {
    return null;
  }
}

function writeStorage(storage: Pick<Storage, "setItem"> | null, key: string, value: string): void {
  try {
    storage?.setItem(key, value);
  } catch {
    // Remembering the fallback is an optimisation.
  }
}
