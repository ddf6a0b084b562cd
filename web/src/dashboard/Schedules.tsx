/** Schedules: the list (rows carry `data-schedule-id`) and a small create form. */

import type { Api } from "../api";
import type { Schedule, TaskType } from "../events";
import { TaskTypeField } from "./TaskTypeField";
import { useFormAction } from "./use-form-action";
import type { Translate } from "./i18n";

export function Schedules(props: { api: Api; schedules: Schedule[]; t: Translate; onSchedule: (s: Schedule) => void }) {
  const { api, schedules, t, onSchedule } = props;
  const { busy, error, onSubmit } = useFormAction(t, async (form, data) => {
    onSchedule(
      await api.createSchedule({
        name: String(data.get("name") ?? "").trim(),
        cron: String(data.get("cron") ?? "").trim(),
        taskType: String(data.get("taskType")) as TaskType,
      }),
    );
    form.reset();
  });

  return (
    <>
      {schedules.length ? (
        <ul className="schedules">
          {schedules.map((schedule) => (
            <li key={schedule.id} className="schedule" data-schedule-id={schedule.id}>
              <span className="schedule-name" dir="auto">{schedule.name}</span>
              <code dir="ltr">{schedule.cron}</code>
              <span className="badge">{t(`taskType.${schedule.taskType}`)}</span>
              <span className={`badge ${schedule.enabled ? "status-completed" : "status-skipped"}`}>
                {t(schedule.enabled ? "schedule.enabled" : "schedule.disabled")}
              </span>
            </li>
          ))}
        </ul>
      ) : (
        <p className="empty">{t("schedules.empty")}</p>
      )}
      <form className="card create-schedule" onSubmit={onSubmit} aria-label={t("schedules.new")}>
        <h3>{t("schedules.new")}</h3>
        <div className="fields">
          <label>
            <span>{t("field.name")}</span>
            <input name="name" required maxLength={200} autoComplete="off" dir="auto" />
          </label>
          <label>
            <span>{t("field.cron")}</span>
            <input name="cron" required defaultValue="0 9 * * *" dir="ltr" autoComplete="off" spellCheck={false} />
          </label>
          <TaskTypeField t={t} />
          <button type="submit" disabled={busy}>
            {t("create")}
          </button>
        </div>
        {error && <p className="form-error">{error}</p>}
      </form>
    </>
  );
}
