/** The `client.js` bundle: the realtime client alone, without React or the REST helpers. */

export { createRealtimeClient } from "./client";
export type * from "./client";
export type * from "./transport-impl";
export { CloseCode, closeAction } from "./close-codes";
export type * from "./close-codes";
export { backoffCeiling, backoffDelay, DEFAULT_BACKOFF } from "./backoff";
export type * from "./backoff";
export * from "./events";
