import { describe, expect, it } from "vitest";
import type { Schedule, Task } from "../src/events";
import { applyScheduleEvent, applyTaskEvent, isNewer, mergeSchedule, mergeTask } from "../src/hooks/task-state";

const T0 = "2026-11-25T19:00:00.000Z";
const T1 = "2026-11-25T19:01:00.000Z";
const actor = { userId: 2, userName: "Sara" };

function task(id: number, overrides: Partial<Task> = {}): Task {
  return {
    id, title: `t${id}`, taskType: "daily", status: "pending", scheduleId: null, userId: 1, userName: "u",
    createdAt: T0, updatedAt: T0, executions: 0, lastResultStatus: null, ...overrides,
  };
}

describe("task list updates", () => {
  it("inserts a created task once, newest id first", () => {
    const list = [task(5), task(3)];
    const event = { id: "e", type: "task_created", ts: T1, ...actor, taskId: 4, taskType: "monthly", title: "x" } as const;
    const next = applyTaskEvent(list, event);
    expect(next.map((t) => t.id)).toEqual([5, 4, 3]);
    expect(applyTaskEvent(next, event)).toBe(next);
  });

  it("ignores updates for unknown tasks and stale events", () => {
    const list = [task(1, { updatedAt: T1 })];
    expect(applyTaskEvent(list, { id: "e", type: "task_updated", ts: T1, ...actor, taskId: 9, taskType: "daily", title: "x" })).toBe(list);
    expect(applyTaskEvent(list, { id: "e", type: "task_updated", ts: T0, ...actor, taskId: 1, taskType: "daily", title: "x" })).toBe(list);
  });

  it("merges changed fields but never the actor into the owner", () => {
    const [updated] = applyTaskEvent([task(1)], { id: "e", type: "task_updated", ts: T1, ...actor, taskId: 1, taskType: "weekly", title: "t" });
    expect(updated).toMatchObject({ taskType: "weekly", title: "t", userId: 1, userName: "u", updatedAt: T1 });
  });

  it("keeps the newer of two versions when merging a REST answer", () => {
    const list = [task(1, { updatedAt: T1, title: "new" })];
    expect(mergeTask(list, task(1, { updatedAt: T0, title: "old" }))[0]?.title).toBe("new");
    expect(mergeTask(list, task(1, { updatedAt: T1, title: "same time" }))[0]?.title).toBe("same time");
  });

  it("counts executions from the event when it carries the total", () => {
    const base = { id: "e", type: "task_executed", ts: T1, ...actor, taskId: 1, taskType: "daily", resultStatus: "completed", executions: 5 } as const;
    expect(applyTaskEvent([task(1, { executions: 4 })], base)[0]?.executions).toBe(5);
    expect(applyTaskEvent([task(1, { executions: 4 })], { ...base, executions: 4 })[0]?.executions).toBe(4);
  });

  it("treats unparseable times as newer", () => {
    expect(isNewer("garbage", T0)).toBe(true);
    expect(isNewer(T0, T0)).toBe(false);
  });
});

describe("schedule list updates", () => {
  const s = (id: number): Schedule => ({ id, name: `s${id}`, cron: "* * * * *", taskType: "daily", enabled: true, createdAt: T0, updatedAt: T0 });

  it("removes deleted schedules without a refetch", () => {
    const result = applyScheduleEvent([s(1), s(2)], { id: "e", type: "schedule_updated", ts: T1, ...actor, scheduleId: 1, action: "deleted", name: "s1" });
    expect(result).toEqual({ schedules: [s(2)], refetch: false });
  });

  it("renames at once and asks for a refetch on update", () => {
    const result = applyScheduleEvent([s(1)], { id: "e", type: "schedule_updated", ts: T1, ...actor, scheduleId: 1, action: "updated", name: "n" });
    expect(result.schedules[0]?.name).toBe("n");
    expect(result.refetch).toBe(true);
  });

  it("merges a REST answer in place or at the end", () => {
    expect(mergeSchedule([s(1), s(2)], { ...s(1), name: "x" }).map((x) => x.name)).toEqual(["x", "s2"]);
    expect(mergeSchedule([s(1)], s(3)).map((x) => x.id)).toEqual([1, 3]);
  });
});
