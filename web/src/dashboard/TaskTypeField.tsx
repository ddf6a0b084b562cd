// The task type picker of the create forms (tasks and schedules).
import { TASK_TYPES } from "../events";
import type { Translate } from "./i18n";

export function TaskTypeField({ t }: { t: Translate }) {
  return (
    <label>
      <span>{t("field.taskType")}</span>
      <select name="taskType" defaultValue="daily">
        {TASK_TYPES.map((type) => (
          <option key={type} value={type}>
            {t(`taskType.${type}`)}
          </option>
        ))}
      </select>
    </label>
  );
}
