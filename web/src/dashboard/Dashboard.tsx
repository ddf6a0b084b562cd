/** The signed-in page: status, tasks, schedules and toasts, all from `useRealtimeTasks`. */

import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { ApiError, createApi } from "../api";
import type { AppEvent, Schedule, Task } from "../events";
import { isExpired } from "../jwt";
import { usePresence } from "../hooks/use-presence";
import { useRealtimeTasks, type Toast } from "../hooks/use-realtime-tasks";
import type { Session } from "./boot";
import { describeError } from "./format";
import { Online } from "./Online";
import type { Lang, MessageKey, Translate } from "./i18n";
import { Schedules } from "./Schedules";
import { StatusIndicator } from "./StatusIndicator";
import { TaskForm, TaskList } from "./Tasks";
import { Toasts, type ToastView } from "./Toasts";

const MAX_TOASTS = 5;

interface DashboardProps {
  session: Session;
  url: string | undefined;
  lang: Lang;
  t: Translate;
  onSignOut: (notice: MessageKey | null) => void;
}

/** The toast text, resolved against the lists as they were when the event arrived. */
function toastView(toast: Toast, tasks: Task[], schedules: Schedule[]): ToastView {
  const event: AppEvent = toast.event;
  if (event.type === "schedule_updated") {
    const known = schedules.find((s) => s.id === event.scheduleId)?.name;
    return {
      id: toast.id,
      text: (t) =>
        t(`toast.schedule_${event.action}`, {
          user: toast.userName,
          name: event.name ?? known ?? t("scheduleNumber", { id: event.scheduleId }),
        }),
    };
  }
  const title =
    event.type === "task_created" ? event.title : tasks.find((task) => task.id === event.taskId)?.title;
  return {
    id: toast.id,
    text: (t) =>
      t(`toast.${event.type}`, {
        user: toast.userName,
        title: title ?? t("taskNumber", { id: event.taskId }),
        result: event.type === "task_executed" ? t(`taskStatus.${event.resultStatus}`) : "",
      }),
  };
}

export function Dashboard(props: DashboardProps) {
  const { session, url, lang, t, onSignOut } = props;
  const [toasts, setToasts] = useState<ToastView[]>([]);
  const getToken = useCallback(() => session.token, [session.token]);
  const lists = useRef<{ tasks: Task[]; schedules: Schedule[] }>({ tasks: [], schedules: [] });

  const onToast = useCallback((toast: Toast) => {
    const view = toastView(toast, lists.current.tasks, lists.current.schedules);
    setToasts((current) => [...current.filter((item) => item.id !== view.id), view].slice(-MAX_TOASTS));
  }, []);
  const dismiss = useCallback((id: string) => setToasts((current) => current.filter((item) => item.id !== id)), []);

  const realtime = useRealtimeTasks({
    ...(url === undefined ? {} : { url }),
    getToken,
    currentUserId: session.claims?.sub ?? null,
    onToast,
  });
  lists.current = { tasks: realtime.tasks, schedules: realtime.schedules };
  const api = useMemo(() => createApi({ ...(url === undefined ? {} : { url }), getToken }), [url, getToken]);

  // A rejected token (close 4401 without a new one, or REST 401) means: sign in again.
  const rejected =
    (realtime.status === "closed" && realtime.client?.reason === "unauthorized") ||
    (realtime.error instanceof ApiError && realtime.error.status === 401);
  // Presence rides on the tasks connection: one socket per page.
  const presence = usePresence({ ...(url === undefined ? {} : { url }), getToken, client: realtime.client });
  useEffect(() => {
    if (rejected) onSignOut(isExpired(session.claims) ? "signIn.expired" : "signIn.rejected");
  }, [rejected, onSignOut, session.claims]);

  const name = session.claims?.name ?? String(session.claims?.sub ?? "");
  return (
    <>
      <div className="toolbar">
        <StatusIndicator status={realtime.status} transport={realtime.transport} t={t} />
        <span className="user">{t("signedInAs", { name })}</span>
        <button type="button" className="link" onClick={() => onSignOut(null)}>
          {t("signOut")}
        </button>
      </div>
      {realtime.error && !rejected && <p className="form-error">{describeError(realtime.error, t)}</p>}
      <main className="columns">
        <section className="panel" aria-labelledby="tasks-heading">
          <div className="panel-head">
            <h2 id="tasks-heading">{t("tasks.title")}</h2>
            <button type="button" className="link" onClick={() => void realtime.refresh()}>
              {t("refresh")}
            </button>
          </div>
          <TaskForm api={api} t={t} onTask={realtime.applyTask} />
          <TaskList
            api={api}
            tasks={realtime.tasks}
            loading={realtime.loading}
            lang={lang}
            t={t}
            onTask={realtime.applyTask}
          />
        </section>
        <section className="panel" aria-labelledby="schedules-heading">
          <div className="panel-head">
            <h2 id="schedules-heading">{t("schedules.title")}</h2>
          </div>
          <Schedules api={api} schedules={realtime.schedules} t={t} onSchedule={realtime.applySchedule} />
        </section>
        <Online users={presence.users} selfId={presence.selfId ?? session.claims?.sub ?? null} t={t} />
      </main>
      <Toasts toasts={toasts} t={t} onDismiss={dismiss} />
    </>
  );
}
