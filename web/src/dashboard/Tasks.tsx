/** The live task list (rows carry `data-task-id`), the create form and per-task execute. */

import type { Api } from "../api";
import { RESULT_STATUSES, type ResultStatus, type Task, type TaskType } from "../events";
import { formatTime } from "./format";
import { TaskTypeField } from "./TaskTypeField";
import { useFormAction } from "./use-form-action";
import type { Lang, Translate } from "./i18n";

interface TasksProps {
  api: Api;
  tasks: Task[];
  loading: boolean;
  lang: Lang;
  t: Translate;
  onTask: (task: Task) => void;
}

export function TaskForm(props: Pick<TasksProps, "api" | "t" | "onTask">) {
  const { api, t, onTask } = props;
  const { busy, error, onSubmit } = useFormAction(t, async (form, data) => {
    const title = String(data.get("title") ?? "").trim();
    if (!title) return;
    onTask(await api.createTask({ title, taskType: String(data.get("taskType")) as TaskType }));
    form.reset();
  });

  return (
    <form className="card create-task" onSubmit={onSubmit} aria-label={t("tasks.new")}>
      <h3>{t("tasks.new")}</h3>
      <div className="fields">
        <label>
          <span>{t("field.title")}</span>
          <input name="title" required maxLength={200} autoComplete="off" dir="auto" />
        </label>
        <TaskTypeField t={t} />
        <button type="submit" disabled={busy}>
          {t("create")}
        </button>
      </div>
      {error && <p className="form-error">{error}</p>}
    </form>
  );
}

function TaskRow(props: { task: Task } & Pick<TasksProps, "api" | "lang" | "t" | "onTask">) {
  const { task, api, lang, t, onTask } = props;
  const { busy, error, onSubmit } = useFormAction(t, async (_form, data) => {
    onTask(await api.executeTask(task.id, { resultStatus: String(data.get("resultStatus")) as ResultStatus }));
  });

  return (
    <li className="task" data-task-id={task.id} data-status={task.status}>
      <div className="task-head">
        <span className="task-title" dir="auto">{task.title}</span>
        <span className="badge">{t(`taskType.${task.taskType}`)}</span>
        <span className={`badge status-${task.status}`}>{t(`taskStatus.${task.status}`)}</span>
      </div>
      <div className="task-meta">
        <span>{t("owner", { name: task.userName })}</span>
        <span>{t("runs", { count: task.executions })}</span>
        <time dateTime={task.updatedAt}>{formatTime(task.updatedAt, lang)}</time>
      </div>
      <form className="execute" onSubmit={onSubmit}>
        <label>
          <span className="visually-hidden">{t("field.result")}</span>
          <select name="resultStatus" defaultValue="completed" aria-label={t("field.result")}>
            {RESULT_STATUSES.map((status) => (
              <option key={status} value={status}>
                {t(`taskStatus.${status}`)}
              </option>
            ))}
          </select>
        </label>
        <button type="submit" disabled={busy}>
          {t("execute")}
        </button>
      </form>
      {error && <p className="form-error">{error}</p>}
    </li>
  );
}

export function TaskList(props: TasksProps) {
  const { tasks, loading, t } = props;
  if (loading && !tasks.length) return <p className="empty">{t("loading")}</p>;
  if (!tasks.length) return <p className="empty">{t("tasks.empty")}</p>;
  return (
    <ul className="tasks">
      {tasks.map((task) => (
        <TaskRow key={task.id} task={task} api={props.api} lang={props.lang} t={t} onTask={props.onTask} />
      ))}
    </ul>
  );
}
