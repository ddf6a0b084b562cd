// @vitest-environment happy-dom
import { act } from "react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { App } from "../src/dashboard/App";
import { serviceUrl, takeTokenFromUrl } from "../src/dashboard/boot";
import { initialLang } from "../src/dashboard/i18n";
import { indicatorFor } from "../src/dashboard/StatusIndicator";
import { TOKEN_STORAGE_KEY } from "../src/token-store";
import { FakeEventSource, FakeWebSocket, MemoryStorage, connectedMessage, fakeFetch } from "./fakes";
import { Mounted, inAct } from "./react";

function base64url(text: string): string {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const TOKEN = `h.${base64url(JSON.stringify({ sub: "1", name: "محمد حسن", roles: ["user"], exp: 4102444800 }))}.s`;
const T0 = "2026-11-25T19:00:00.000Z";

function setUrl(url: string): void {
  (window as unknown as { happyDOM: { setURL(url: string): void } }).happyDOM.setURL(url);
}

let mounted: Mounted | null = null;
let container: HTMLElement;
let api: ReturnType<typeof fakeFetch>;

async function renderApp(lang: "en" | "ar" = "en"): Promise<void> {
  mounted = await Mounted.render(<App initialLang={lang} url={undefined} storage={new MemoryStorage()} />);
  container = mounted.container;
}

const step = inAct; // a user's or the server's action, inside act

function $(selector: string): HTMLElement | null {
  return container.querySelector<HTMLElement>(selector);
}

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
  setUrl("http://svc.test/");
  sessionStorage.clear();
  FakeWebSocket.reset();
  FakeEventSource.reset();
  api = fakeFetch((call) => {
    const path = new URL(call.url).pathname;
    if (path === "/api/realtime/ticket") return { status: 200, body: { ticket: "tk", expiresIn: 60 } };
    if (path === "/api/tasks" && call.method === "GET") {
      return { status: 200, body: { tasks: [{ id: 1, title: "نسخ احتياطي", taskType: "daily", status: "pending", scheduleId: null, userId: 1, userName: "محمد حسن", createdAt: T0, updatedAt: T0, executions: 0, lastResultStatus: null }], next: null } };
    }
    if (path === "/api/tasks" && call.method === "POST") {
      return { status: 201, body: { id: 2, title: (call.body as { title: string }).title, taskType: "weekly", status: "pending", scheduleId: null, userId: 1, userName: "محمد حسن", createdAt: T0, updatedAt: T0, executions: 0, lastResultStatus: null } };
    }
    if (path === "/api/tasks/1/execute") {
      return { status: 200, body: { id: 1, title: "نسخ احتياطي", taskType: "daily", status: "failed", scheduleId: null, userId: 1, userName: "محمد حسن", createdAt: T0, updatedAt: "2026-11-25T19:02:00.000Z", executions: 1, lastResultStatus: "failed" } };
    }
    if (path === "/api/schedules") return { status: 200, body: { schedules: [] } };
    return { status: 404, body: { error: "not_found" } };
  });
  vi.stubGlobal("fetch", api.impl);
  vi.stubGlobal("WebSocket", FakeWebSocket);
  vi.stubGlobal("EventSource", FakeEventSource);
});

afterEach(async () => {
  await mounted?.unmount();
  mounted = null;
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

describe("boot", () => {
  it("moves ?token= into sessionStorage and out of the address bar", () => {
    setUrl("http://svc.test/?lang=ar&token=abc.def.ghi#x");
    takeTokenFromUrl();
    expect(sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBe("abc.def.ghi");
    expect(window.location.href).toBe("http://svc.test/?lang=ar#x");
  });

  it("picks the language from ?lang=, then storage, then the browser", () => {
    const storage = new MemoryStorage();
    expect(initialLang("?lang=ar", storage, "en-US")).toBe("ar");
    expect(initialLang("", storage, "ar-EG")).toBe("ar");
    storage.setItem("realtime.lang", "en");
    expect(initialLang("", storage, "ar-EG")).toBe("en");
  });

  it("maps client status to the indicator", () => {
    expect(indicatorFor("open", true)).toBe("connected");
    expect(indicatorFor("connecting", true)).toBe("reconnecting");
    expect(indicatorFor("reconnecting", true)).toBe("reconnecting");
    expect(indicatorFor("closed", true)).toBe("offline");
    expect(indicatorFor("reconnecting", false)).toBe("offline");
  });
});

describe("dashboard", () => {
  it("asks for a token when there is none, and signs in with a pasted one", async () => {
    await renderApp();
    const textarea = $("textarea#token") as HTMLTextAreaElement;
    expect(textarea).not.toBeNull();
    textarea.value = "not a token";
    await step(() => ($("form.signin") as HTMLFormElement).requestSubmit());
    expect($(".notice")?.textContent).toContain("does not look like a token");
    textarea.value = TOKEN;
    await step(() => ($("form.signin") as HTMLFormElement).requestSubmit());
    expect(sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBe(TOKEN);
    expect($(".user")?.textContent).toContain("محمد حسن");
  });

  it("shows status, transport, live tasks, and other users' actions as alerts", async () => {
    sessionStorage.setItem(TOKEN_STORAGE_KEY, TOKEN);
    await renderApp();
    expect($('[role="status"]')?.dataset.status).toBe("reconnecting");
    expect(FakeWebSocket.last.url.startsWith("ws://svc.test/ws?ticket=tk&events=task_created")).toBe(true);
    await step(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.deliver(connectedMessage());
    });
    const status = $('[role="status"]');
    expect(status?.dataset.status).toBe("connected");
    expect(status?.textContent).toContain("WebSocket");
    expect($('[data-task-id="1"]')?.textContent).toContain("نسخ احتياطي");

    await step(() =>
      FakeWebSocket.last.deliver({ id: "e1", type: "task_executed", ts: "2026-11-25T19:01:00.000Z", userId: 2, userName: "Sara", taskId: 1, taskType: "daily", resultStatus: "skipped" }),
    );
    expect($('[data-task-id="1"]')?.dataset.status).toBe("skipped");
    const alert = $('[role="alert"]');
    expect(alert?.textContent).toContain("Sara");
    expect(alert?.textContent).toContain("نسخ احتياطي");
    await act(async () => {
      await vi.advanceTimersByTimeAsync(6000);
    });
    expect($('[role="alert"]')).toBeNull();

    await step(() => FakeWebSocket.last.serverClose(1012));
    expect($('[role="status"]')?.dataset.status).toBe("reconnecting");
  });

  it("creates and executes tasks over REST with the Bearer token", async () => {
    sessionStorage.setItem(TOKEN_STORAGE_KEY, TOKEN);
    await renderApp();
    const form = $("form.create-task") as HTMLFormElement;
    (form.querySelector('input[name="title"]') as HTMLInputElement).value = "Weekly report";
    (form.querySelector('select[name="taskType"]') as HTMLSelectElement).value = "weekly";
    await step(() => form.requestSubmit());
    const post = api.calls.find((c) => c.method === "POST" && c.url.endsWith("/api/tasks"));
    expect(post?.body).toEqual({ title: "Weekly report", taskType: "weekly" });
    expect(post?.headers.Authorization).toBe(`Bearer ${TOKEN}`);
    expect($('[data-task-id="2"]')?.textContent).toContain("Weekly report");

    const row = $('[data-task-id="1"]') as HTMLElement;
    (row.querySelector('select[name="resultStatus"]') as HTMLSelectElement).value = "failed";
    await step(() => (row.querySelector("form") as HTMLFormElement).requestSubmit());
    expect(api.calls.find((c) => c.url.endsWith("/api/tasks/1/execute"))?.body).toEqual({ resultStatus: "failed" });
    expect($('[data-task-id="1"]')?.dataset.status).toBe("failed");
  });

  it("switches to Arabic, right to left", async () => {
    sessionStorage.setItem(TOKEN_STORAGE_KEY, TOKEN);
    await renderApp();
    await step(() => ($("button.lang") as HTMLButtonElement).click());
    expect(document.documentElement.getAttribute("dir")).toBe("rtl");
    expect(document.documentElement.getAttribute("lang")).toBe("ar");
    expect($("h1")?.textContent).toBe("المهام الفورية");
  });

  it("keeps code-like inputs and values left to right in Arabic, free text by its content", async () => {
    const schedule = { id: 3, name: "تقرير الصباح", cron: "0 9 * * *", taskType: "daily", enabled: true, createdAt: T0, updatedAt: T0 };
    const others = api.impl;
    const schedules = fakeFetch(() => ({ status: 200, body: { schedules: [schedule] } }));
    vi.stubGlobal("fetch", (input: RequestInfo | URL, init?: RequestInit) =>
      (new URL(String(input)).pathname === "/api/schedules" ? schedules.impl : others)(input, init),
    );
    sessionStorage.setItem(TOKEN_STORAGE_KEY, TOKEN);
    await renderApp("ar");
    expect(document.documentElement.getAttribute("dir")).toBe("rtl");
    // A cron string read right to left shows `0 9 * * *` as `* * * 9 0`.
    expect($('input[name="cron"]')?.getAttribute("dir")).toBe("ltr");
    const cron = [...container.querySelectorAll("code")].find((el) => el.textContent === "0 9 * * *");
    expect(cron?.getAttribute("dir")).toBe("ltr");
    expect($('input[name="title"]')?.getAttribute("dir")).toBe("auto");
    expect($('input[name="name"]')?.getAttribute("dir")).toBe("auto");
    await step(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.serverClose(4401, "invalid token");
    });
    expect($("textarea#token")?.getAttribute("dir")).toBe("ltr"); // a JWT is code too
  });

  it("returns to sign-in when the server rejects the token", async () => {
    sessionStorage.setItem(TOKEN_STORAGE_KEY, TOKEN);
    await renderApp();
    await step(() => {
      FakeWebSocket.last.accept();
      FakeWebSocket.last.serverClose(4401, "invalid token");
    });
    expect($("textarea#token")).not.toBeNull();
    expect(sessionStorage.getItem(TOKEN_STORAGE_KEY)).toBeNull();
  });
});
