/** WebSocket close codes of the service and what the client does on each (both generated from
 * the service's schema: `generated/schema.ts`; docs/protocol.md has the table). */

import { CLOSE_CODES, CLOSE_POLICY, type CloseAction } from "./generated/schema";

export type { CloseAction, StopReason } from "./generated/schema";

export const CloseCode = {
  ...CLOSE_CODES,
  /** @deprecated The service's name is `TOO_MANY_BAD_MESSAGES`. */
  BAD_MESSAGES: CLOSE_CODES.TOO_MANY_BAD_MESSAGES,
} as const;

export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

export function closeAction(code: number): CloseAction {
  return { ...(CLOSE_POLICY[code] ?? { action: "retry" }) };
}
