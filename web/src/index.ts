/** Public API: the realtime client, the REST helpers and the React hooks. */

export { createRealtimeClient } from "./client";
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
export { useWebSocket } from "./hooks/use-websocket";
export type { UseWebSocketOptions, UseWebSocketResult } from "./hooks/use-websocket";
export { useRealtimeTasks } from "./hooks/use-realtime-tasks";
export type { Toast, UseRealtimeTasksOptions, UseRealtimeTasksResult } from "./hooks/use-realtime-tasks";
export { applyPresenceEvent, usePresence } from "./hooks/use-presence";
export type { UsePresenceOptions, UsePresenceResult } from "./hooks/use-presence";
export { applyScheduleEvent, applyTaskEvent, mergeSchedule, mergeTask } from "./hooks/task-state";
