/**
 * What the client needs of a WebSocket or EventSource implementation, structurally: exactly
 * the members client.ts uses, so that the browser's classes, Node 22's global WebSocket and
 * the `ws` package's class (Node 20 has none) all fit `WebSocketImpl` without a cast.
 */

/**
 * A callback property compared bivariantly (a method's rule), as React's event handlers are:
 * `ws` types its `onmessage` with its own event class, the DOM with `MessageEvent`; each
 * accepts the few fields below, but neither would under strict function-type variance.
 */
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

/** The fields of a message event the client reads. */
export interface MessageLike {
  readonly data: unknown;
}

/** The field of a close event the client reads. */
export interface CloseLike {
  readonly code: number;
}

/** An open or opening WebSocket, as the client drives it. */
export interface WebSocketLike {
  /** 0 connecting, 1 open, 2 closing, 3 closed (the standard's numbers). */
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  /** Text frames must arrive as a string `data` (the DOM's and `ws`'s behaviour). */
  onmessage: Handler<MessageLike> | null;
  onerror: Handler<unknown> | null;
  onclose: Handler<CloseLike> | null;
  send(data: string): void;
  close(code?: number): void;
}

/** `new WebSocketImpl(url)`: the client passes the URL only (no subprotocols, no options). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** A server-sent event: `data` and `lastEventId` (the stream's `id:`). */
export interface SseMessageLike extends MessageLike {
  readonly lastEventId: string;
}

/** An EventSource, as the client drives it. */
export interface EventSourceLike {
  onopen: Handler<unknown> | null;
  onmessage: Handler<SseMessageLike> | null;
  onerror: Handler<unknown> | null;
  /** Named events (`event: task_created`) reach only listeners added for their name. */
  addEventListener(type: string, listener: (event: SseMessageLike) => void): void;
  close(): void;
}

/** `new EventSourceImpl(url)`: the URL only (credentials travel as a ticket in it). */
export type EventSourceConstructor = new (url: string) => EventSourceLike;
