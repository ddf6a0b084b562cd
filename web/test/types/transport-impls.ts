// Type-level test (checked by `npm run typecheck`, not run): the classes users pass as
// WebSocketImpl and EventSourceImpl fit without a cast: the `ws` package's (Node 20), the DOM's.
import WebSocket from "ws";
import { createRealtimeClient, type EventSourceConstructor, type WebSocketConstructor } from "../../src/core";

export const nodeClient = () =>
  createRealtimeClient({ url: "http://127.0.0.1:5001", getToken: () => "jwt", WebSocketImpl: WebSocket });

export const wsClass: WebSocketConstructor = WebSocket;
export const domWebSocket: WebSocketConstructor = globalThis.WebSocket;
export const domEventSource: EventSourceConstructor = globalThis.EventSource;

class NoSend {
  readyState = 0;
  onopen = null;
  onmessage = null;
  onerror = null;
  onclose = null;
  close(): void {}
  constructor(readonly url: string) {}
}
// @ts-expect-error: the client sends over the socket; a class without `send` does not fit.
export const missingSend: WebSocketConstructor = NoSend;
