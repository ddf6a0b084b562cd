/**
 * The service's REST API (README "REST API") as typed functions; every call sends the Bearer token.
 *
 * Each change (POST/PATCH/DELETE) is one user action with one `Idempotency-Key`: when the
 * answer is lost (network error) or the service says "not now" (409, 502, 503, 504), the
 * call retries with the same key, so the change happens once however often it is sent.
 */

import type {
  ApiErrorBody,
  Execution,
  NewSchedule,
  NewTask,
  Schedule,
  ScheduleList,
  Task,
  TaskChange,
  TaskPage,
  TaskStatus,
} from "./generated/schema";
import { endpoint, resolveBase } from "./urls";
import type { TokenSource } from "./client";

export interface ApiOptions {
  /** Service base URL; default: the page's origin. */
  url?: string;
  getToken: TokenSource;
  fetchImpl?: typeof fetch;
  /** Sends of one change after the first, when no answer came or the service said "retry" (default 3). */
  retries?: number;
  /** A new Idempotency-Key (default: 128 random bits in hex). */
  newKey?: () => string;
  /** Waits between sends (default: setTimeout). */
  sleep?: (ms: number) => Promise<void>;
}

/** Answers after which the same request, with the same key, may simply be sent again. */
const RETRY_STATUSES = new Set([409, 502, 503, 504]);
const RETRY_BASE_MS = 500;
const RETRY_CAP_MS = 5000;

/** Wait before retry `attempt` (1-based): the service's Retry-After if any, else 0.5 s doubling, capped. */
export function retryDelay(attempt: number, retryAfter: string | null): number {
  const seconds = retryAfter === null ? Number.NaN : Number(retryAfter);
  const ms = Number.isFinite(seconds) && seconds >= 0 ? seconds * 1000 : RETRY_BASE_MS * 2 ** (attempt - 1);
  return Math.min(RETRY_CAP_MS, ms);
}

/** 128 random bits as hex: `crypto.randomUUID` exists only on https and localhost pages. */
export function randomKey(): string {
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function isAbort(error: unknown): boolean {
  return error instanceof Error && error.name === "AbortError";
}

/** A non-2xx answer; `body` is the service's `{error, reason?, fields?}` when it sent one. */
export class ApiError extends Error {
  readonly status: number;
  readonly body: Partial<ApiErrorBody> | null;

  constructor(status: number, body: ApiError["body"]) {
    super(body?.reason ?? body?.error ?? `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

export type { ApiErrorBody, Execution, NewSchedule, NewTask, ScheduleChange, TaskChange, TaskPage } from "./generated/schema";

export interface Api {
  listTasks(query?: { status?: TaskStatus; limit?: number; after?: number }, signal?: AbortSignal): Promise<TaskPage>;
  createTask(body: NewTask): Promise<Task>;
  executeTask(id: number, body: Execution): Promise<Task>;
  updateTask(id: number, body: TaskChange): Promise<Task>;
  deleteTask(id: number): Promise<void>;
  listSchedules(signal?: AbortSignal): Promise<Schedule[]>;
  createSchedule(body: NewSchedule): Promise<Schedule>;
}

export function createApi(options: ApiOptions): Api {
  const base = resolveBase(options.url);
  const fetchImpl = options.fetchImpl ?? globalThis.fetch.bind(globalThis);

  const retries = options.retries ?? 3;
  const newKey = options.newKey ?? randomKey;
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));

  async function send(method: string, path: string, body: unknown, key: string | null, signal?: AbortSignal) {
    const token = await options.getToken();
    const headers: Record<string, string> = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key !== null) headers["Idempotency-Key"] = key;
    return fetchImpl(endpoint(base, path), {
      method,
      headers,
      body: body === undefined ? null : JSON.stringify(body),
      signal: signal ?? null,
    });
  }

  async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const key = method === "GET" ? null : newKey();
    let response: Response;
    for (let attempt = 0; ; attempt++) {
      const last = key === null || attempt >= retries;
      try {
        response = await send(method, path, body, key, signal);
      } catch (error) {
        if (last || isAbort(error)) throw error;
        await sleep(retryDelay(attempt + 1, null));
        continue;
      }
      if (last || !RETRY_STATUSES.has(response.status)) break;
      await sleep(retryDelay(attempt + 1, response.headers?.get("Retry-After") ?? null));
    }
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
      const page = await call<ScheduleList>("GET", "/api/schedules", undefined, signal);
      return page.schedules;
    },
    createSchedule: (body) => call<Schedule>("POST", "/api/schedules", body),
  };
}
