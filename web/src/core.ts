/** The package root: the realtime client, the REST helpers, tokens and event types; no React (Node can import it). */

export { createRealtimeClient } from "./client";
export type {
  CloseLike,
  EventSourceConstructor,
  EventSourceLike,
  MessageLike,
  SseMessageLike,
  WebSocketConstructor,
  WebSocketLike,
} from "./transport-impl";
export type {
  Listener,
  RealtimeClient,
  RealtimeClientOptions,
  ReconnectOptions,
  Status,
  StatusInfo,
  TokenSource,
} from "./client";
export { CloseCode, closeAction } from "./close-codes";
export type { CloseAction, StopReason } from "./close-codes";
export { backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from "./backoff";
export type { BackoffOptions } from "./backoff";
export { ApiError, createApi } from "./api";
export type { Api, ApiOptions, TaskPage } from "./api";
export { decodeJwtPayload, isExpired } from "./jwt";
export type { TokenClaims } from "./jwt";
export { TOKEN_STORAGE_KEY, storedToken, storeToken } from "./token-store";
export * from "./events";
