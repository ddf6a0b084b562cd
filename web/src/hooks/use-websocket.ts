/** `useWebSocket`: one realtime client per mounted component, closed on unmount. */

import { useCallback, useEffect, useRef, useState } from "react";
import { createRealtimeClient, type RealtimeClient, type RealtimeClientOptions, type Status } from "../client";
import type { RealtimeEvent, TransportName } from "../events";
import { storedToken } from "../token-store";

export interface UseWebSocketOptions extends Omit<RealtimeClientOptions, "getToken"> {
  /** Default: the token the dashboard keeps in sessionStorage. */
  getToken?: RealtimeClientOptions["getToken"];
  /** Called for every message, before `lastEvent` updates. */
  onEvent?: (event: RealtimeEvent) => void;
  /** `false` keeps the client closed (e.g. until a token is known). Default true. */
  enabled?: boolean;
}

export interface UseWebSocketResult {
  status: Status;
  isConnected: boolean;
  transport: TransportName | null;
  lastEvent: RealtimeEvent | null;
  /** Send a message over the WebSocket; false when not connected over WebSocket. */
  send: (message: object | string) => boolean;
  client: RealtimeClient | null;
}

interface Connection {
  client: RealtimeClient | null;
  status: Status;
  transport: TransportName | null;
}

export function useWebSocket(options: UseWebSocketOptions = {}): UseWebSocketResult {
  // Callbacks read the latest options; only connection-shaping options recreate the client.
  const latest = useRef(options);
  latest.current = options;
  const enabled = options.enabled !== false;
  const [connection, setConnection] = useState<Connection>({
    client: null,
    status: enabled ? "connecting" : "closed",
    transport: null,
  });
  const [lastEvent, setLastEvent] = useState<RealtimeEvent | null>(null);
  const key = JSON.stringify([
    enabled,
    options.url ?? null,
    options.transports ?? null,
    options.events ?? null,
    options.ticketUrl,
    options.reconnect ?? null,
  ]);

  useEffect(() => {
    if (!enabled) {
      setConnection({ client: null, status: "closed", transport: null });
      return;
    }
    const { onEvent: _onEvent, enabled: _enabled, getToken: _getToken, ...clientOptions } = latest.current;
    const client = createRealtimeClient({
      ...clientOptions,
      getToken: () => (latest.current.getToken ?? storedToken)(),
    });
    setConnection({ client, status: client.status, transport: client.transport });
    const offStatus = client.onStatus(({ status, transport }) => {
      setConnection({ client, status, transport });
    });
    const offEvents = client.on("*", (event) => {
      latest.current.onEvent?.(event);
      setLastEvent(event);
    });
    return () => {
      offStatus();
      offEvents();
      client.close();
    };
    // `key` stands for the options that shape the connection.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key]);

  const { client } = connection;
  // A sign-in after mount re-renders with a token (or a new getToken): a client closed for want
  // of one looks again. It connects only for a token other than the refused one, so no loop.
  useEffect(() => {
    client?.tokenChanged();
  });
  const send = useCallback((message: object | string) => client?.send(message) ?? false, [client]);
  return {
    status: connection.status,
    isConnected: connection.status === "open",
    transport: connection.transport,
    lastEvent,
    send,
    client,
  };
}
