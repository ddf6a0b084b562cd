// @vitest-environment happy-dom
import { StrictMode, act, useState, type ReactNode } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Schedule, Task } from "../src/events";
import { useRealtimeTasks, type Toast, type UseRealtimeTasksResult } from "../src/hooks/use-realtime-tasks";
import { useWebSocket, type UseWebSocketResult } from "../src/hooks/use-websocket";
import {
  FakeEventSource,
  FakeWebSocket,
  connectedMessage,
  fakeFetch,
  fakeOptions,
  type FakeResponse,
} from "./fakes";
import { Mounted, inAct } from "./react";
import { TOKEN_STORAGE_KEY, storeToken } from "../src/token-store";

const T0 = "2026-11-25T19:00:00.000Z";

function task(id: number, overrides: Partial<Task> = {}): Task {
  return {
    id,
    title: `Task ${id}`,
    taskType: "daily",
    status: "pending",
    scheduleId: null,
    userId: 1,
    userName: "محمد حسن",
    createdAt: T0,
    updatedAt: T0,
    executions: 0,
    lastResultStatus: null,
    ...overrides,
  };
}

function schedule(id: number, overrides: Partial<Schedule> = {}): Schedule {
  return { id, name: `S${id}`, cron: "0 9 * * *", taskType: "daily", enabled: true, createdAt: T0, updatedAt: T0, ...overrides };
}

/** A REST backend with mutable lists; `gate` can hold task fetches until released. */
function backend() {
  const state = { tasks: [task(2), task(1)], schedules: [schedule(1)], gate: null as Promise<void> | null };
  const fetch = fakeFetch(async (call): Promise<FakeResponse> => {
    const path = new URL(call.url).pathname;
    if (call.headers.Authorization !== "Bearer tok") return { status: 401, body: { error: "unauthorized" } };
    if (path === "/api/tasks") {
      const snapshot = state.tasks.slice();
      if (state.gate) await state.gate;
      return { status: 200, body: { tasks: snapshot, next: null } };
    }
    if (path === "/api/schedules") return { status: 200, body: { schedules: state.schedules.slice() } };
    return { status: 404, body: { error: "not_found" } };
  });
  const count = (path: string) => fetch.calls.filter((c) => new URL(c.url).pathname === path).length;
  return { state, fetch, count };
}

let mounted: Mounted | null = null;
let container: HTMLElement;

async function render(node: ReactNode): Promise<void> {
  mounted = await Mounted.render(node);
  container = mounted.container;
}

async function unmount(): Promise<void> {
  await mounted?.unmount();
  mounted = null;
}

const server = inAct; // what the fake server does, inside act

function clientOptions() {
  return fakeOptions({ getToken: () => "tok" });
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  FakeWebSocket.reset();
  FakeEventSource.reset();
});

afterEach(async () => {
  await unmount();
  vi.useRealTimers();
});

function renderTasks(extra: { onToast?: (toast: Toast) => void; currentUserId?: number } = {}) {
  const api = backend();
  const result: { current: UseRealtimeTasksResult | null } = { current: null };
  function Probe() {
    result.current = useRealtimeTasks({ ...clientOptions(), fetchImpl: api.fetch.impl, ...extra });
    return null;
  }
  return { api, result, Probe };
}

function ids(result: { current: UseRealtimeTasksResult | null }): number[] {
  return result.current?.tasks.map((t) => t.id) ?? [];
}

describe("useRealtimeTasks", () => {
  it("fetches both lists with the Bearer token and subscribes to task and schedule events", async () => {
    const { api, result, Probe } = renderTasks();
    await render(<Probe />);
    expect(ids(result)).toEqual([2, 1]);
    expect(result.current?.schedules.map((s) => s.id)).toEqual([1]);
    expect(result.current?.loading).toBe(false);
    expect(api.fetch.calls.every((c) => c.headers.Authorization === "Bearer tok")).toBe(true);
    expect(FakeWebSocket.last.query.get("events")).toBe(
      "task_created,task_executed,task_updated,task_deleted,schedule_updated",
    );
    expect(result.current?.isConnected).toBe(false);
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage());
    });
    expect(result.current?.isConnected).toBe(true);
    expect(result.current?.status).toBe("open");
    expect(result.current?.transport).toBe("websocket");
  });

  it("keeps the task list current on task events", async () => {
    const { result, Probe } = renderTasks();
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
    });
    const later = "2026-11-25T19:05:00.000Z";
    const actor = { userId: 2, userName: "Sara" };
    await server(() => {
      ws.deliver({ id: "e1", type: "task_created", ts: later, ...actor, taskId: 3, taskType: "weekly", title: "New" });
      ws.deliver({ id: "e2", type: "task_executed", ts: later, ...actor, taskId: 1, taskType: "daily", resultStatus: "failed" });
      ws.deliver({ id: "e3", type: "task_updated", ts: later, ...actor, taskId: 2, title: "Renamed" });
    });
    expect(ids(result)).toEqual([3, 2, 1]);
    const [created, updated, executed] = result.current?.tasks ?? [];
    expect(created).toMatchObject({ id: 3, title: "New", taskType: "weekly", status: "pending", userName: "Sara" });
    expect(updated).toMatchObject({ id: 2, title: "Renamed", userId: 1, updatedAt: later });
    expect(executed).toMatchObject({ id: 1, status: "failed", lastResultStatus: "failed", executions: 1 });
    await server(() => ws.deliver({ id: "e4", type: "task_deleted", ts: later, ...actor, taskId: 2 }));
    expect(ids(result)).toEqual([3, 1]);
  });

  it("removes deleted schedules and refetches created or updated ones", async () => {
    const { api, result, Probe } = renderTasks();
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
    });
    const before = api.count("/api/schedules");
    api.state.schedules = [schedule(1), schedule(2, { name: "Nightly" })];
    await server(() =>
      ws.deliver({ id: "s1", type: "schedule_updated", ts: T0, userId: 2, userName: "Sara", scheduleId: 2, action: "created" }),
    );
    expect(api.count("/api/schedules")).toBe(before + 1);
    expect(result.current?.schedules.map((s) => s.name)).toEqual(["S1", "Nightly"]);
    await server(() =>
      ws.deliver({ id: "s2", type: "schedule_updated", ts: T0, userId: 2, userName: "Sara", scheduleId: 1, action: "deleted" }),
    );
    expect(result.current?.schedules.map((s) => s.id)).toEqual([2]);
    expect(api.count("/api/schedules")).toBe(before + 1);
  });

  it("raises toasts only for other users' actions", async () => {
    const toasts: Toast[] = [];
    const { Probe } = renderTasks({ onToast: (toast) => toasts.push(toast) });
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage({ userId: 1 }));
      ws.deliver({ id: "mine", type: "task_deleted", ts: T0, userId: 1, userName: "محمد حسن", taskId: 1 });
      ws.deliver({ id: "theirs", type: "task_deleted", ts: T0, userId: "2", userName: "Sara", taskId: 2 });
    });
    expect(toasts).toEqual([expect.objectContaining({ id: "theirs", type: "task_deleted", userName: "Sara" })]);
  });

  it("refetches on `resync` and after a reconnect that did not resume", async () => {
    const { api, Probe } = renderTasks();
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
    });
    const afterConnect = api.count("/api/tasks");
    // A failed resume: `connected` (resumed=false) then `resync`; the first refetch covers both.
    await server(() => ws.deliver({ type: "resync", reason: "history unavailable" }));
    expect(api.count("/api/tasks")).toBe(afterConnect);
    await server(() => ws.deliver({ id: "e1", type: "task_deleted", ts: T0, userId: 1, userName: "u", taskId: 1 }));
    await server(() => ws.deliver({ type: "resync", reason: "history expired" }));
    expect(api.count("/api/tasks")).toBe(afterConnect + 1);

    await server(() => ws.serverClose(1012));
    await act(async () => {
      await vi.advanceTimersByTimeAsync(1500);
    });
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage({ resumed: true }));
    });
    expect(api.count("/api/tasks")).toBe(afterConnect + 1);

    await server(() => FakeWebSocket.last.serverClose(1006));
    await act(async () => {
      await vi.advanceTimersByTimeAsync(3000);
    });
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage({ resumed: false }));
    });
    expect(api.count("/api/tasks")).toBe(afterConnect + 2);
  });

  it("applies events that arrive during a refetch onto its result", async () => {
    const { api, result, Probe } = renderTasks();
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
    });
    let release: () => void = () => undefined;
    api.state.gate = new Promise<void>((resolve) => (release = resolve));
    await server(() => ws.deliver({ type: "resync", reason: "gap" }));
    await server(() =>
      ws.deliver({ id: "e9", type: "task_created", ts: "2026-11-25T19:09:00.000Z", userId: 2, userName: "S", taskId: 9, taskType: "daily", title: "During" }),
    );
    api.state.gate = null;
    await server(() => release());
    expect(ids(result)).toEqual([9, 2, 1]);
  });

  it("does not double-count an execution the fetched task already includes", async () => {
    const { api, result, Probe } = renderTasks();
    const stamp = "2026-11-25T19:10:00.000Z";
    api.state.tasks = [task(1, { executions: 1, status: "completed", lastResultStatus: "completed", updatedAt: stamp })];
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
      ws.deliver({ id: "x", type: "task_executed", ts: stamp, userId: 1, userName: "a", taskId: 1, taskType: "daily", resultStatus: "completed" });
    });
    expect(result.current?.tasks[0]?.executions).toBe(1);
  });

  it("opens one socket under StrictMode and leaves no socket or timer after unmount", async () => {
    const { Probe } = renderTasks();
    await render(
      <StrictMode>
        <Probe />
      </StrictMode>,
    );
    expect(FakeWebSocket.live()).toHaveLength(1);
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage());
    });
    await unmount();
    expect(FakeWebSocket.live()).toHaveLength(0);
    expect(FakeWebSocket.instances.every((s) => s.closedWith === 1000)).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it("leaves nothing behind when unmounted while reconnecting", async () => {
    const { Probe } = renderTasks();
    await render(<Probe />);
    await server(() => FakeWebSocket.last.fail());
    expect(vi.getTimerCount()).toBeGreaterThan(0);
    await unmount();
    expect(vi.getTimerCount()).toBe(0);
    await act(async () => {
      await vi.advanceTimersByTimeAsync(60_000);
    });
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe("useWebSocket", () => {
  it("reports status and the last event, and sends over the socket", async () => {
    const result: { current: UseWebSocketResult | null } = { current: null };
    function Probe() {
      result.current = useWebSocket(clientOptions());
      return null;
    }
    await render(<Probe />);
    expect(result.current?.status).toBe("connecting");
    expect(result.current?.send({ type: "ping" })).toBe(false);
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage());
      FakeWebSocket.last.deliver({ id: "1", type: "custom.thing", ts: T0, n: 1 });
    });
    expect(result.current?.isConnected).toBe(true);
    expect(result.current?.lastEvent).toEqual({ id: "1", type: "custom.thing", ts: T0, n: 1 });
    expect(result.current?.send({ type: "ping", nonce: 1 })).toBe(true);
    expect(FakeWebSocket.last.messages).toEqual([{ type: "ping", nonce: 1 }]);
    expect(result.current?.client?.status).toBe("open");
  });

  it("stays closed while disabled", async () => {
    const result: { current: UseWebSocketResult | null } = { current: null };
    function Probe() {
      result.current = useWebSocket({ ...clientOptions(), enabled: false });
      return null;
    }
    await render(<Probe />);
    expect(result.current?.status).toBe("closed");
    expect(FakeWebSocket.instances).toHaveLength(0);
  });
});

describe("signing in after mount", () => {
  it("useRealtimeTasks connects and fetches once a re-render brings a token", async () => {
    const api = backend();
    const result: { current: UseRealtimeTasksResult | null } = { current: null };
    let signIn: (token: string) => void = () => {};
    function Page() {
      const [token, setToken] = useState<string | null>(null);
      signIn = setToken;
      result.current = useRealtimeTasks({ ...fakeOptions({ getToken: () => token }), fetchImpl: api.fetch.impl });
      return null;
    }
    await render(<Page />);
    expect(result.current?.status).toBe("closed");
    expect(FakeWebSocket.instances).toHaveLength(0);
    await server(() => signIn("tok"));
    expect(FakeWebSocket.instances).toHaveLength(1);
    await server(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage());
    });
    expect(result.current?.isConnected).toBe(true);
    expect(ids(result)).toEqual([2, 1]);
    expect(api.fetch.calls.at(-1)?.headers.Authorization).toBe("Bearer tok");
  });

  it("useWebSocket connects when storeToken() saves a token", async () => {
    sessionStorage.removeItem(TOKEN_STORAGE_KEY);
    const result: { current: UseWebSocketResult | null } = { current: null };
    function Probe() {
      result.current = useWebSocket({ ...fakeOptions({ window }), getToken: undefined });
      return null;
    }
    await render(<Probe />);
    expect(result.current?.status).toBe("closed");
    await server(() => storeToken("tok-2")); // nothing re-renders Probe: the event alone
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(FakeWebSocket.last.query.get("token")).toBe("tok-2");
    sessionStorage.removeItem(TOKEN_STORAGE_KEY);
  });

  it("a refused token does not reconnect on every render", async () => {
    const result: { current: UseWebSocketResult | null } = { current: null };
    let rerender: () => void = () => {};
    function Probe() {
      const [, setN] = useState(0);
      rerender = () => setN((n) => n + 1);
      result.current = useWebSocket(fakeOptions({ getToken: () => "bad" }));
      return null;
    }
    await render(<Probe />);
    await server(() => FakeWebSocket.last.serverClose(4401, "token expired"));
    expect(result.current?.status).toBe("closed");
    await server(() => rerender());
    await server(() => rerender());
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});
