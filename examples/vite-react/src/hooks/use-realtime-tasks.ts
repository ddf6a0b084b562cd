// The thin wrapper an app writes once: where the service is, where the token comes from, and
// toasts kept as state. Pages call `useRealtimeTasks()` with no arguments.
import { useCallback, useState } from "react";
import {
  type Toast,
  type UseRealtimeTasksOptions,
  type UseRealtimeTasksResult,
  useRealtimeTasks as useServiceTasks,
} from "@realtime-tasks/web/react";

/** The service's origin (REST, `/ws`, `/events`); unset means this page's own origin. */
const url = import.meta.env.VITE_WS_URL;

/** Your app's sign-in decides this; the example keeps the JWT in sessionStorage. */
export const TOKEN_KEY = "realtime.token";
const getToken = () => sessionStorage.getItem(TOKEN_KEY);

const TOAST_MS = 6000;

export interface RealtimeTasks extends UseRealtimeTasksResult {
  /** Other users' task and schedule changes, newest last; each disappears after 6 s. */
  toasts: Toast[];
  dismissToast: (id: string) => void;
}

export function useRealtimeTasks(options: UseRealtimeTasksOptions = {}): RealtimeTasks {
  const [toasts, setToasts] = useState<Toast[]>([]);
  const dismissToast = useCallback((id: string) => setToasts((all) => all.filter((t) => t.id !== id)), []);
  const onToast = useCallback(
    (toast: Toast) => {
      setToasts((all) => [...all.filter((t) => t.id !== toast.id), toast].slice(-5));
      setTimeout(() => dismissToast(toast.id), TOAST_MS);
    },
    [dismissToast],
  );
  const realtime = useServiceTasks({ ...(url ? { url } : {}), getToken, onToast, ...options });
  return { ...realtime, toasts, dismissToast };
}
