// @vitest-environment happy-dom
import type { ReactNode } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Online } from "../src/dashboard/Online";
import { translator } from "../src/dashboard/i18n";
import type { PresentUser } from "../src/events";
import { applyPresenceEvent, usePresence, type UsePresenceResult } from "../src/hooks/use-presence";
import { useWebSocket, type UseWebSocketResult } from "../src/hooks/use-websocket";
import { FakeEventSource, FakeWebSocket, connectedMessage, fakeFetch, fakeOptions } from "./fakes";
import { Mounted, inAct } from "./react";

const T0 = "2026-12-01T17:00:00.000Z";
const SARA: PresentUser = { userId: 2, userName: "سارة", since: T0, connections: { websocket: 1, sse: 0 } };

let mounted: Mounted | null = null;
let container: HTMLElement;

async function render(node: ReactNode): Promise<void> {
  mounted = await Mounted.render(node);
  container = mounted.container;
}

const server = inAct; // what the fake server does, inside act

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  FakeWebSocket.reset();
  FakeEventSource.reset();
});

afterEach(async () => {
  await mounted?.unmount();
  mounted = null;
  vi.useRealTimers();
});

function presenceBackend(users: PresentUser[]) {
  let gate: Promise<void> | null = null;
  const fetch = fakeFetch(async (call) => {
    if (new URL(call.url).pathname !== "/api/presence") return { status: 404, body: { error: "not_found" } };
    const snapshot = users.slice();
    if (gate) await gate;
    return { status: 200, body: { users: snapshot, count: snapshot.length } };
  });
  return {
    fetch,
    hold(): () => void {
      let release = () => {};
      gate = new Promise<void>((resolve) => (release = resolve));
      return () => {
        gate = null;
        release();
      };
    },
  };
}

describe("applyPresenceEvent", () => {
  it("adds a joined user once and removes a leaving one", () => {
    const joined = { id: "e1", ts: T0, type: "presence_joined" as const, userId: 3, userName: "عمر" };
    const once = applyPresenceEvent([SARA], joined);
    expect(once.map((u) => u.userId)).toEqual([2, 3]);
    expect(applyPresenceEvent(once, joined)).toBe(once);
    const left = { id: "e2", ts: T0, type: "presence_left" as const, userId: 2, userName: "سارة" };
    expect(applyPresenceEvent(once, left).map((u) => u.userId)).toEqual([3]);
  });
});

describe("usePresence", () => {
  it("opens a connection filtered to presence events, fetches the list and follows joins and leaves", async () => {
    const api = presenceBackend([SARA]);
    const result: { current: UsePresenceResult | null } = { current: null };
    function Probe() {
      result.current = usePresence({ ...fakeOptions({ getToken: () => "tok" }), fetchImpl: api.fetch.impl });
      return null;
    }
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    expect(ws.query.get("events")).toBe("presence_joined,presence_left");
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage({ userId: 1 }));
    });
    expect(api.fetch.calls[0]?.headers.Authorization).toBe("Bearer tok");
    expect(result.current?.users).toEqual([SARA]);
    expect(result.current?.selfId).toBe(1);
    await server(() => ws.deliver({ id: "e1", ts: T0, type: "presence_joined", userId: 3, userName: "عمر" }));
    await server(() => ws.deliver({ id: "e2", ts: T0, type: "presence_left", userId: 2, userName: "سارة" }));
    expect(result.current?.users.map((u) => u.userId)).toEqual([3]);
  });

  it("applies events that arrive during the fetch onto its answer", async () => {
    const api = presenceBackend([SARA]);
    const release = api.hold();
    const result: { current: UsePresenceResult | null } = { current: null };
    function Probe() {
      result.current = usePresence({ ...fakeOptions(), fetchImpl: api.fetch.impl });
      return null;
    }
    await render(<Probe />);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
      ws.deliver({ id: "e1", ts: T0, type: "presence_left", userId: 2, userName: "سارة" });
    });
    expect(result.current?.loading).toBe(true);
    await server(release);
    expect(result.current?.users).toEqual([]);
    expect(result.current?.loading).toBe(false);
  });

  it("shares another hook's client: subscribes it to presence and opens no socket of its own", async () => {
    const api = presenceBackend([SARA]);
    const result: { current: UsePresenceResult | null } = { current: null };
    function Probe() {
      const socket: UseWebSocketResult = useWebSocket({ ...fakeOptions(), events: ["task_created"] });
      result.current = usePresence({ url: "http://svc.test", getToken: () => "t", client: socket.client, fetchImpl: api.fetch.impl });
      return null;
    }
    await render(<Probe />);
    expect(FakeWebSocket.instances.length).toBe(1);
    const ws = FakeWebSocket.last;
    await server(() => {
      ws.accept();
      ws.deliver(connectedMessage());
    });
    expect(ws.messages).toContainEqual({ type: "subscribe", events: ["presence_joined", "presence_left"] });
    expect(result.current?.users).toEqual([SARA]);
    expect(result.current?.status).toBe("open");
  });
});

describe("Online", () => {
  it("lists names right-to-left-safe and marks the signed-in user's own entry", async () => {
    const me: PresentUser = { userId: 1, userName: "محمد حسن", since: T0, connections: { websocket: 1 } };
    await render(<Online users={[me, SARA]} selfId={"1"} t={translator("ar")} />);
    const items = [...container.querySelectorAll("li")];
    expect(items.map((li) => li.querySelector("bdi")?.textContent)).toEqual(["محمد حسن", "سارة"]);
    expect(items.every((li) => li.querySelector("bdi")?.getAttribute("dir") === "auto")).toBe(true);
    expect(items.map((li) => li.dataset.self ?? null)).toEqual(["true", null]);
    expect(items[0]?.textContent).toContain("أنت");
  });
});
