/**
 * `useRealtimeTasks`: the task and schedule lists, fetched over REST and kept current by
 * realtime events; refetched after `resync` and after every reconnect that did not resume.
 */

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { createApi, type Api } from "../api";
import type { RealtimeClient, Status } from "../client";
import {
  APP_EVENT_TYPES,
  type AppEvent,
  type RealtimeEvent,
  type Schedule,
  type Task,
  type TransportName,
  type UserId,
} from "../events";
import { storedToken } from "../token-store";
import { applyScheduleEvent, applyTaskEvent, isAppEvent, isTaskEvent, mergeSchedule, mergeTask, removeTask } from "./task-state";
import { useWebSocket, type UseWebSocketOptions } from "./use-websocket";

/** A notification about another user's action; the app decides how to show it. */
export interface Toast {
  /** The event id: stable, usable as a React key. */
  id: string;
  type: AppEvent["type"];
  userName: string;
  event: AppEvent;
}

export interface UseRealtimeTasksOptions extends Omit<UseWebSocketOptions, "events" | "onEvent"> {
  /** The signed-in user; default: the `userId` of the `connected` message. */
  currentUserId?: UserId | null;
  /** Called for task and schedule events caused by other users. */
  onToast?: (toast: Toast) => void;
  /** How many tasks to fetch (newest first). Default 100. */
  limit?: number;
}

export interface UseRealtimeTasksResult {
  isConnected: boolean;
  status: Status;
  transport: TransportName | null;
  tasks: Task[];
  schedules: Schedule[];
  /** Whether the first fetch is still running. */
  loading: boolean;
  /** The last REST failure, cleared by the next successful fetch. */
  error: Error | null;
  /** Refetch both lists over REST. */
  refresh: () => Promise<void>;
  /** Merge a task from a REST answer (so your own changes show before their event). */
  applyTask: (task: Task) => void;
  /** Drop a task (e.g. after your own DELETE). */
  forgetTask: (id: number) => void;
  applySchedule: (schedule: Schedule) => void;
  client: RealtimeClient | null;
}

/** Per-mount bookkeeping; a remount (StrictMode) starts a fresh one and the old one's work stops. */
interface SyncState {
  alive: boolean;
  aborter: AbortController;
  fetching: boolean;
  again: boolean;
  /** Events received while a fetch runs, replayed onto its result. */
  buffer: AppEvent[] | null;
  schedulesFetching: boolean;
  schedulesAgain: boolean;
  userId: UserId | null;
  /** A refetch started at this connection's `connected`: it already covers a `resync`. */
  freshSinceConnect: boolean;
}

function newSyncState(): SyncState {
  return {
    alive: true,
    aborter: new AbortController(),
    fetching: false,
    again: false,
    buffer: null,
    schedulesFetching: false,
    schedulesAgain: false,
    userId: null,
    freshSinceConnect: false,
  };
}

export function useRealtimeTasks(options: UseRealtimeTasksOptions = {}): UseRealtimeTasksResult {
  const latest = useRef(options);
  latest.current = options;
  const [tasks, setTasks] = useState<Task[]>([]);
  const [schedules, setSchedules] = useState<Schedule[]>([]);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<Error | null>(null);
  const latestError = useRef(error);
  latestError.current = error;
  const sync = useRef<SyncState>(newSyncState());
  const enabled = options.enabled !== false;

  const api: Api = useMemo(
    () =>
      createApi({
        ...(options.url === undefined ? {} : { url: options.url }),
        getToken: () => (latest.current.getToken ?? storedToken)(),
        fetchImpl: (input, init) => (latest.current.fetchImpl ?? globalThis.fetch)(input, init),
      }),
    [options.url],
  );

  const refresh = useCallback(async (): Promise<void> => {
    const state = sync.current;
    if (state.fetching) {
      state.again = true; // The running fetch may predate what asked for this one.
      return;
    }
    state.fetching = true;
    try {
      do {
        state.again = false;
        state.buffer = [];
        const limit = latest.current.limit ?? 100;
        const { signal } = state.aborter;
        const [page, scheduleList] = await Promise.all([api.listTasks({ limit }, signal), api.listSchedules(signal)]);
        if (!state.alive) return;
        if (state.again) continue;
        let nextTasks = page.tasks;
        let nextSchedules = scheduleList;
        for (const event of state.buffer) {
          if (isTaskEvent(event)) nextTasks = applyTaskEvent(nextTasks, event);
          else nextSchedules = applyScheduleEvent(nextSchedules, event).schedules;
        }
        setTasks(nextTasks);
        setSchedules(nextSchedules);
        setError(null);
      } while (state.again && state.alive);
    } catch (caught) {
      if (state.alive && !isAbort(caught)) setError(caught instanceof Error ? caught : new Error(String(caught)));
    } finally {
      state.fetching = false;
      state.buffer = null;
      if (state.alive) setLoading(false);
    }
  }, [api]);

  const refreshSchedules = useCallback(async (): Promise<void> => {
    const state = sync.current;
    if (state.fetching) {
      state.again = true;
      return;
    }
    if (state.schedulesFetching) {
      state.schedulesAgain = true;
      return;
    }
    state.schedulesFetching = true;
    try {
      do {
        state.schedulesAgain = false;
        const list = await api.listSchedules(state.aborter.signal);
        if (!state.alive) return;
        if (!state.schedulesAgain) setSchedules(list);
      } while (state.schedulesAgain && state.alive);
    } catch (caught) {
      if (state.alive && !isAbort(caught)) setError(caught instanceof Error ? caught : new Error(String(caught)));
    } finally {
      state.schedulesFetching = false;
    }
  }, [api]);

  const onEvent = useCallback(
    (event: RealtimeEvent): void => {
      const state = sync.current;
      if (event.type === "connected") {
        const connected = event as Extract<RealtimeEvent, { type: "connected" }>;
        state.userId = connected.userId;
        // Events may have been missed while disconnected (or before the first connect); a
        // resumed stream replays them, but a fetch that failed meanwhile is still stale.
        const refetch = !connected.resumed || latestError.current !== null;
        state.freshSinceConnect = refetch;
        if (refetch) void refresh();
        return;
      }
      if (event.type === "resync") {
        // The server follows a failed resume's `connected` with `resync`: one refetch will do.
        if (!state.freshSinceConnect) void refresh();
        state.freshSinceConnect = false;
        return;
      }
      state.freshSinceConnect = false;
      if (!isAppEvent(event)) return;
      state.buffer?.push(event);
      if (isTaskEvent(event)) {
        setTasks((current) => applyTaskEvent(current, event));
      } else {
        setSchedules((current) => applyScheduleEvent(current, event).schedules);
        // The event names the schedule, not all its fields: fetch what changed.
        if (event.action !== "deleted") void refreshSchedules();
      }
      const me = latest.current.currentUserId ?? state.userId;
      if (me !== null && me !== undefined && String(event.userId) !== String(me) && event.id) {
        latest.current.onToast?.({ id: event.id, type: event.type, userName: event.userName, event });
      }
    },
    [refresh, refreshSchedules],
  );

  const { limit: _limit, onToast: _onToast, currentUserId: _currentUserId, ...socketOptions } = options;
  const socket = useWebSocket({ ...socketOptions, events: APP_EVENT_TYPES, onEvent });

  useEffect(() => {
    const state = newSyncState();
    sync.current = state;
    if (enabled) void refresh();
    else setLoading(false);
    return () => {
      state.alive = false;
      state.aborter.abort();
    };
  }, [refresh, enabled]);

  const applyTask = useCallback((task: Task) => setTasks((current) => mergeTask(current, task)), []);
  const forgetTask = useCallback((id: number) => setTasks((current) => removeTask(current, id)), []);
  const applySchedule = useCallback(
    (schedule: Schedule) => setSchedules((current) => mergeSchedule(current, schedule)),
    [],
  );

  return {
    isConnected: socket.isConnected,
    status: socket.status,
    transport: socket.transport,
    tasks,
    schedules,
    loading,
    error,
    refresh,
    applyTask,
    forgetTask,
    applySchedule,
    client: socket.client,
  };
}

function isAbort(error: unknown): boolean {
  return typeof error === "object" && error !== null && (error as { name?: string }).name === "AbortError";
}
