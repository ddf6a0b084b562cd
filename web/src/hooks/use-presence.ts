/**
 * `usePresence`: who is online anywhere in the fleet, from `GET /api/presence` kept current by
 * `presence_joined` / `presence_left`.
 *
 * Give it another hook's client (`useRealtimeTasks().client`) and it adds the two presence
 * types to that connection's subscription (no second connection); without one it opens its
 * own, filtered to them. The list is fetched when the connection opens and at every
 * `connected` that did not resume; events arriving during a fetch are applied after it (joins
 * and leaves are idempotent on the list, so fetch and events converge whatever their order).
 */

import { useCallback, useEffect, useRef, useState } from "react";
import type { RealtimeClient, Status } from "../client";
import { PRESENCE_EVENT_TYPES, type PresenceEvent, type PresentUser, type RealtimeEvent, type UserId } from "../events";
import { storedToken } from "../token-store";
import { endpoint, resolveBase } from "../urls";
import { useWebSocket, type UseWebSocketOptions } from "./use-websocket";

export interface UsePresenceOptions extends Omit<UseWebSocketOptions, "events" | "onEvent"> {
  /** Share this client's connection (set the key, even to null while it is created, to never open another). */
  client?: RealtimeClient | null;
  fetchImpl?: typeof fetch;
}

export interface UsePresenceResult {
  /** Online users, oldest first; a user who just joined is appended. */
  users: PresentUser[];
  /** The signed-in user's id (from `connected`), to mark their own entry. */
  selfId: UserId | null;
  status: Status;
  loading: boolean;
  error: Error | null;
}

/** Apply one presence event to a list (pure; a join of a listed user or a leave of an unlisted one changes nothing). */
export function applyPresenceEvent(users: PresentUser[], event: PresenceEvent): PresentUser[] {
  const listed = users.some((user) => user.userId === event.userId);
  if (event.type === "presence_left") return listed ? users.filter((user) => user.userId !== event.userId) : users;
  if (listed) return users;
  return [...users, { userId: event.userId, userName: event.userName, since: event.ts, connections: {} }];
}

function isPresenceEvent(event: RealtimeEvent): event is PresenceEvent {
  return event.type === "presence_joined" || event.type === "presence_left";
}

export function usePresence(options: UsePresenceOptions = {}): UsePresenceResult {
  const latest = useRef(options);
  latest.current = options;
  const [users, setUsers] = useState<PresentUser[]>([]);
  const [selfId, setSelfId] = useState<UserId | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<Error | null>(null);
  // Events received while a fetch runs; null when no fetch runs.
  const buffer = useRef<PresenceEvent[] | null>(null);
  const alive = useRef(true);

  const refresh = useCallback(async (): Promise<void> => {
    if (buffer.current !== null) return; // a fetch is running; it started after the last connect
    buffer.current = [];
    try {
      const token = await (latest.current.getToken ?? storedToken)();
      const fetchImpl = latest.current.fetchImpl ?? globalThis.fetch.bind(globalThis);
      const response = await fetchImpl(endpoint(resolveBase(latest.current.url), "/api/presence"), {
        headers: { Accept: "application/json", ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      });
      if (!response.ok) throw new Error(`GET /api/presence: HTTP ${response.status}`);
      const body = (await response.json()) as { users: PresentUser[] };
      if (!alive.current) return;
      const pending = buffer.current ?? [];
      setUsers(pending.reduce(applyPresenceEvent, body.users));
      setError(null);
    } catch (failure) {
      if (alive.current) setError(failure instanceof Error ? failure : new Error(String(failure)));
    } finally {
      buffer.current = null;
      if (alive.current) setLoading(false);
    }
  }, []);

  const onEvent = useCallback(
    (event: RealtimeEvent) => {
      if (event.type === "connected") {
        const connected = event as Extract<RealtimeEvent, { type: "connected" }>;
        setSelfId(connected.userId);
        if (!connected.resumed) void refresh();
        return;
      }
      if (event.type === "resync") {
        void refresh();
        return;
      }
      if (!isPresenceEvent(event)) return;
      if (buffer.current !== null) buffer.current.push(event);
      else setUsers((current) => applyPresenceEvent(current, event));
    },
    [refresh],
  );

  useEffect(() => {
    alive.current = true;
    return () => {
      alive.current = false;
    };
  }, []);

  const shared = "client" in options;
  const sharedClient = options.client ?? null;
  const [sharedStatus, setSharedStatus] = useState<Status>("connecting");
  useEffect(() => {
    if (!sharedClient) return;
    sharedClient.subscribe(PRESENCE_EVENT_TYPES);
    const offEvents = sharedClient.on("*", onEvent);
    const offStatus = sharedClient.onStatus(({ status, transport }) => {
      // A subscription made while a WebSocket was still connecting reaches only the next URL:
      // repeat it once open. Never over SSE: there a subscribe restarts the stream (each
      // restart would open again, and subscribe again); its URL already carries the types.
      if (status === "open" && transport === "websocket") sharedClient.subscribe(PRESENCE_EVENT_TYPES);
      setSharedStatus(status);
    });
    setSharedStatus(sharedClient.status);
    if (sharedClient.status === "open") void refresh(); // its `connected` came before we listened
    return () => {
      offEvents();
      offStatus();
    };
  }, [sharedClient, onEvent, refresh]);

  const { fetchImpl: _fetchImpl, client: _client, ...socketOptions } = options;
  const socket = useWebSocket({
    ...socketOptions,
    enabled: !shared && options.enabled !== false,
    events: PRESENCE_EVENT_TYPES,
    onEvent,
  });
  return { users, selfId, status: shared ? sharedStatus : socket.status, loading, error };
}
