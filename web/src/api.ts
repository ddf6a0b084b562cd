/** The service's REST API (SPEC §7) as typed functions; every call sends the Bearer token. */

import type { ResultStatus, Schedule, Task, TaskType } from "./events";
import { endpoint, resolveBase } from "./urls";
import type { TokenSource } from "./client";

export interface ApiOptions {
  /** Service base URL; default: the page's origin. */
  url?: string;
  getToken: TokenSource;
  fetchImpl?: typeof fetch;
}

/** A non-2xx answer; `body` is the service's `{error, reason?, fields?}` when it sent one. */
export class ApiError extends Error {
  readonly status: number;
  readonly body: { error?: string; reason?: string; fields?: Record<string, string> } | null;

  constructor(status: number, body: ApiError["body"]) {
    super(body?.reason ?? body?.error ?? `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

export interface TaskPage {
  tasks: Task[];
  next: number | null;
}

export interface Api {
  listTasks(query?: { status?: string; limit?: number; after?: number }, signal?: AbortSignal): Promise<TaskPage>;
  createTask(body: { title: string; taskType: TaskType; scheduleId?: number | null }): Promise<Task>;
  executeTask(id: number, body: { resultStatus: ResultStatus; note?: string }): Promise<Task>;
  updateTask(id: number, body: Partial<Pick<Task, "title" | "taskType" | "status" | "scheduleId">>): Promise<Task>;
  deleteTask(id: number): Promise<void>;
  listSchedules(signal?: AbortSignal): Promise<Schedule[]>;
  createSchedule(body: { name: string; cron: string; taskType: TaskType; enabled?: boolean }): Promise<Schedule>;
}

export function createApi(options: ApiOptions): Api {
  const base = resolveBase(options.url);
  const fetchImpl = options.fetchImpl ?? globalThis.fetch.bind(globalThis);

  async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const token = await options.getToken();
    const headers: Record<string, string> = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetchImpl(endpoint(base, path), {
      method,
      headers,
      body: body === undefined ? null : JSON.stringify(body),
      signal: signal ?? null,
    });
    const text = await response.text();
    let parsed: unknown = null;
    if (text) {
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = null;
      }
    }
    if (!response.ok) throw new ApiError(response.status, (parsed as ApiError["body"]) ?? null);
    return parsed as T;
  }

  return {
    listTasks(query = {}, signal) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, String(value));
      const search = params.toString();
      const suffix = search ? `?${search}` : "";
      return call<TaskPage>("GET", `/api/tasks${suffix}`, undefined, signal);
    },
    createTask: (body) => call<Task>("POST", "/api/tasks", body),
    executeTask: (id, body) => call<Task>("POST", `/api/tasks/${id}/execute`, body),
    updateTask: (id, body) => call<Task>("PATCH", `/api/tasks/${id}`, body),
    deleteTask: async (id) => {
      await call<unknown>("DELETE", `/api/tasks/${id}`);
    },
    async listSchedules(signal) {
      const page = await call<{ schedules: Schedule[] }>("GET", "/api/schedules", undefined, signal);
      return page.schedules;
    },
    createSchedule: (body) => call<Schedule>("POST", "/api/schedules", body),
  };
}
