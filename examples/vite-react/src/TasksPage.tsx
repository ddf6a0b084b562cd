import { useRealtimeTasks } from '@/hooks/use-realtime-tasks';

/** The product note's page, with a status indicator, the live task list and toasts. */
export function TasksPage() {
  const { isConnected, status, transport, tasks, loading, error, toasts, dismissToast } = useRealtimeTasks();
  const indicator = isConnected ? "connected" : status === "closed" ? "offline" : "reconnecting";

  return (
    <main>
      <header>
        <h1>Tasks</h1>
        <span className={`status ${indicator}`} role="status" data-status={indicator} data-transport={transport ?? ""}>
          {isConnected ? `Live (${transport})` : status === "closed" ? "Offline" : "Reconnecting…"}
        </span>
      </header>
      {error && <p className="error">Could not load the tasks: {error.message}</p>}
      {loading ? (
        <p>Loading…</p>
      ) : (
        <ul className="tasks">
          {tasks.map((task) => (
            <li key={task.id} data-task-id={task.id}>
              <span dir="auto">{task.title}</span> <small>{task.status}</small>
            </li>
          ))}
        </ul>
      )}
      <div className="toasts">
        {toasts.map((toast) => (
          <div key={toast.id} role="alert" className="toast" onClick={() => dismissToast(toast.id)}>
            <b dir="auto">{toast.userName}</b>{" "}
            {toast.event.type === "task_created" ? (
              <>
                created <span dir="auto">{toast.event.title}</span>
              </>
            ) : (
              toast.type.replace("_", " ")
            )}
          </div>
        ))}
      </div>
    </main>
  );
}
