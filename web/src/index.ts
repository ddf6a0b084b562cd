/** `@realtime-tasks/web/react`: the React hooks, plus everything of the package root. */

export * from "./core";
export { useWebSocket } from "./hooks/use-websocket";
export type { UseWebSocketOptions, UseWebSocketResult } from "./hooks/use-websocket";
export { useRealtimeTasks } from "./hooks/use-realtime-tasks";
export type { Toast, UseRealtimeTasksOptions, UseRealtimeTasksResult } from "./hooks/use-realtime-tasks";
export { applyPresenceEvent, usePresence } from "./hooks/use-presence";
export type { UsePresenceOptions, UsePresenceResult } from "./hooks/use-presence";
export { applyScheduleEvent, applyTaskEvent, mergeSchedule, mergeTask } from "./hooks/task-state";
