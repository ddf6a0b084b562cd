/** Pure list updates for `useRealtimeTasks`: how each event changes the task and schedule lists. */

import type { AppEvent, Schedule, ScheduleUpdatedEvent, Task, TaskEvent } from "../events";

// Task fields a `task_updated` event may carry; the actor (`userId`, `userName`) is not the owner.
const UPDATABLE: readonly (keyof Task)[] = [
  "title",
  "taskType",
  "status",
  "scheduleId",
  "executions",
  "lastResultStatus",
  "updatedAt",
];

export function isTaskEvent(event: { type: string }): event is TaskEvent {
  return (
    event.type === "task_created" ||
    event.type === "task_executed" ||
    event.type === "task_updated" ||
    event.type === "task_deleted"
  );
}

export function isAppEvent(event: { type: string }): event is AppEvent {
  return isTaskEvent(event) || event.type === "schedule_updated";
}

/**
 * Whether a change stamped `ts` is newer than a task last updated at `updatedAt`.
 * The service stamps an event with the same time as the change it reports, so an event
 * already reflected in a fetched task is not applied twice.
 */
export function isNewer(ts: string | undefined, updatedAt: string | undefined): boolean {
  const a = ts ? Date.parse(ts) : Number.NaN;
  const b = updatedAt ? Date.parse(updatedAt) : Number.NaN;
  if (Number.isNaN(a) || Number.isNaN(b)) return true;
  return a > b;
}

/** Insert (newest id first) or replace a task, keeping the more recent version. */
export function mergeTask(tasks: readonly Task[], task: Task): Task[] {
  const index = tasks.findIndex((t) => t.id === task.id);
  if (index >= 0) {
    const current = tasks[index] as Task;
    if (isNewer(current.updatedAt, task.updatedAt)) return tasks as Task[];
    const next = tasks.slice();
    next[index] = task;
    return next;
  }
  const at = tasks.findIndex((t) => t.id < task.id);
  const next = tasks.slice();
  next.splice(at < 0 ? next.length : at, 0, task);
  return next;
}

export function removeTask(tasks: readonly Task[], id: number): Task[] {
  return tasks.some((t) => t.id === id) ? tasks.filter((t) => t.id !== id) : (tasks as Task[]);
}

/** The task list after one task event; the same array when nothing changed. */
export function applyTaskEvent(tasks: readonly Task[], event: TaskEvent): Task[] {
  const list = tasks as Task[];
  if (event.type === "task_deleted") return removeTask(list, event.taskId);
  const index = list.findIndex((t) => t.id === event.taskId);
  if (event.type === "task_created") {
    if (index >= 0) return list;
    return mergeTask(list, {
      id: event.taskId,
      title: event.title,
      taskType: event.taskType,
      status: "pending",
      scheduleId: null, // task_created does not carry it; a refetch brings it
      userId: event.userId,
      userName: event.userName,
      createdAt: event.ts,
      updatedAt: event.ts,
      executions: 0,
      lastResultStatus: null,
    });
  }
  const current = list[index];
  if (!current || !isNewer(event.ts, current.updatedAt)) return list;
  let updated: Task;
  if (event.type === "task_executed") {
    updated = {
      ...current,
      status: event.resultStatus,
      lastResultStatus: event.resultStatus,
      executions: typeof event.executions === "number" ? event.executions : current.executions + 1,
      updatedAt: event.ts,
    };
  } else {
    const changes: Partial<Task> = {};
    const source = event as unknown as Record<string, unknown>;
    for (const key of UPDATABLE) if (key in source) (changes as Record<string, unknown>)[key] = source[key];
    updated = { ...current, ...changes, updatedAt: typeof changes.updatedAt === "string" ? changes.updatedAt : event.ts };
  }
  const next = list.slice();
  next[index] = updated;
  return next;
}

/**
 * The schedule list after a `schedule_updated` event, and whether it must be refetched
 * (the event names the schedule, not all of its fields).
 */
export function applyScheduleEvent(
  schedules: readonly Schedule[],
  event: ScheduleUpdatedEvent,
): { schedules: Schedule[]; refetch: boolean } {
  const list = schedules as Schedule[];
  if (event.action === "deleted") {
    const next = list.some((s) => s.id === event.scheduleId) ? list.filter((s) => s.id !== event.scheduleId) : list;
    return { schedules: next, refetch: false };
  }
  const index = list.findIndex((s) => s.id === event.scheduleId);
  if (index >= 0 && typeof event.name === "string") {
    const next = list.slice();
    next[index] = { ...(list[index] as Schedule), name: event.name };
    return { schedules: next, refetch: true };
  }
  return { schedules: list, refetch: true };
}

/** Insert or replace a schedule (e.g. from a REST answer); new ones go last, as listed. */
export function mergeSchedule(schedules: readonly Schedule[], schedule: Schedule): Schedule[] {
  const index = schedules.findIndex((s) => s.id === schedule.id);
  const next = schedules.slice();
  if (index >= 0) next[index] = schedule;
  else next.push(schedule);
  return next;
}
