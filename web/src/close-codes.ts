/** WebSocket close codes of the service (SPEC §6) and what the client does on each. */

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  MESSAGE_TOO_BIG: 1009,
  SERVICE_RESTART: 1012,
  DISCONNECTED_BY_ADMIN: 4000,
  BAD_MESSAGES: 4400,
  UNAUTHORIZED: 4401,
  FORBIDDEN: 4403,
  SLOW_CONSUMER: 4408,
  TOO_MANY_CONNECTIONS: 4429,
} as const;

export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/**
 * What to do after a close:
 * - `retry`: reconnect with backoff (and resume);
 * - `reauth`: ask `getToken()` again and reconnect only with a different token;
 * - `stop`: stay closed (`reason` says why).
 */
export type CloseAction =
  | { action: "retry" }
  | { action: "reauth" }
  | { action: "stop"; reason: StopReason };

export type StopReason = "normal" | "disconnected" | "forbidden" | "client_error" | "unauthorized" | "closed";

export function closeAction(code: number): CloseAction {
  switch (code) {
    case CloseCode.NORMAL:
      return { action: "stop", reason: "normal" };
    case CloseCode.UNAUTHORIZED:
      return { action: "reauth" };
    case CloseCode.DISCONNECTED_BY_ADMIN:
      return { action: "stop", reason: "disconnected" };
    case CloseCode.FORBIDDEN:
      return { action: "stop", reason: "forbidden" };
    // A bug in this client: retrying would only repeat it.
    case CloseCode.MESSAGE_TOO_BIG:
    case CloseCode.BAD_MESSAGES:
      return { action: "stop", reason: "client_error" };
    // 1012 drain, 4408 slow consumer, 4429 too many, 1006 network and anything unknown.
    default:
      return { action: "retry" };
  }
}
