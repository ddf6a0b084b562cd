// A client written against the operation types that openapi-typescript generates from the
// service's OpenAPI document (schema.d.ts, generated next to this file by
// tests/system/test_openapi_codegen.py). tsc fails when an operationId disappears or is renamed, or
// when a body, parameter or answer these calls rely on changes shape.
import type { components, operations, paths } from "./schema";

type OperationId = keyof operations;
type JsonBody<K extends OperationId> = operations[K] extends { requestBody: { content: { "application/json": infer B } } }
  ? B
  : never;
type JsonAnswer<K extends OperationId, Code extends keyof operations[K]["responses"]> = operations[K]["responses"][Code] extends {
  content: { "application/json": infer R };
}
  ? R
  : never;

/** Every operation by id, no more, no fewer: `satisfies` fails on a missing or an unknown one. */
export const routes = {
  listTasks: "GET /api/tasks",
  createTask: "POST /api/tasks",
  getTask: "GET /api/tasks/{id}",
  updateTask: "PATCH /api/tasks/{id}",
  deleteTask: "DELETE /api/tasks/{id}",
  executeTask: "POST /api/tasks/{id}/execute",
  listSchedules: "GET /api/schedules",
  createSchedule: "POST /api/schedules",
  getSchedule: "GET /api/schedules/{id}",
  updateSchedule: "PATCH /api/schedules/{id}",
  deleteSchedule: "DELETE /api/schedules/{id}",
  publishEvent: "POST /api/events",
  createTicket: "POST /api/realtime/ticket",
  listPresence: "GET /api/presence",
  getOpenApi: "GET /api/openapi.json",
  listConnections: "GET /api/connections",
  closeConnection: "DELETE /api/connections/{id}",
  closeUserConnections: "DELETE /api/users/{userId}/connections",
  streamEvents: "GET /events",
  poll: "GET /poll",
  websocket: "GET /ws",
} as const satisfies Record<OperationId, string>;

// The operation behind each path is the one with that id.
export const samePost: paths["/api/tasks"]["post"] extends operations["createTask"] ? true : false = true;

/** Whatever carries the request (fetch, a test double); kept abstract so no DOM types are needed. */
declare function send(method: string, url: string, headers: Record<string, string>, body?: string): Promise<unknown>;

async function call<K extends OperationId, Code extends keyof operations[K]["responses"]>(
  id: K,
  _expect: Code,
  init: { path?: Record<string, string | number>; query?: Record<string, string | number>; body?: JsonBody<K>; key?: string },
): Promise<JsonAnswer<K, Code>> {
  const [method, template] = routes[id].split(" ") as [string, string];
  const path = template.replace(/\{(\w+)\}/g, (_m, name: string) => encodeURIComponent(String(init.path?.[name])));
  const query = Object.entries(init.query ?? {})
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join("&");
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (init.key) headers["Idempotency-Key"] = init.key;
  const body = init.body === undefined ? undefined : JSON.stringify(init.body);
  return (await send(method, `${path}?${query}`, headers, body)) as JsonAnswer<K, Code>;
}

export async function createAndRead(): Promise<components["schemas"]["Task"]> {
  const created = await call("createTask", 201, { body: { title: "Backup", taskType: "daily" }, key: "k1" });
  const id: number = created.id;
  const params: operations["getTask"]["parameters"]["path"] = { id };
  const page = await call("listTasks", 200, { query: { status: "pending", limit: 50 } satisfies operations["listTasks"]["parameters"]["query"] });
  const next: number | null = page.next;
  void next;
  return call("getTask", 200, { path: params });
}

export async function publishAndTicket(): Promise<string> {
  const accepted = await call("publishEvent", 202, { body: { type: "note", text: "hello", to: { roles: ["ops"] } } });
  const ok: boolean = accepted.accepted;
  void ok;
  const { ticket, expiresIn } = await call("createTicket", 200, {});
  return `${ticket} ${expiresIn}`;
}

// The schema's enums reach the generated types.
// @ts-expect-error: "hourly" is not a task type
export const wrongType: JsonBody<"createTask"> = { title: "Backup", taskType: "hourly" };
