import { describe, expect, it } from "vitest";
import { decodeJwtPayload, isExpired } from "../src/jwt";
import { endpoint, resolveBase, webSocketUrl } from "../src/urls";

function base64url(text: string): string {
  const bytes = new TextEncoder().encode(text);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function jwt(payload: object): string {
  return `${base64url('{"alg":"HS256","typ":"JWT"}')}.${base64url(JSON.stringify(payload))}.sig`;
}

describe("decodeJwtPayload", () => {
  it("decodes an Arabic name as UTF-8", () => {
    const claims = decodeJwtPayload(jwt({ sub: "1", name: "محمد حسن", roles: ["user"], exp: 2 }));
    expect(claims).toEqual({ sub: "1", name: "محمد حسن", roles: ["user"], exp: 2 });
  });

  it("handles base64url characters and missing padding", () => {
    const name = "??>>~~ü"; // encodes to `-` and `_` in base64url
    expect(decodeJwtPayload(jwt({ name }))?.name).toBe(name);
  });

  it.each(["", "abc", "a.!!!.c", `a.${base64url("[1]")}.c`, `a.${base64url("not json")}.c`])(
    "returns null for %j",
    (token) => {
      expect(decodeJwtPayload(token)).toBeNull();
    },
  );

  it("tells whether exp has passed", () => {
    expect(isExpired({ exp: 100 }, 100_000)).toBe(true);
    expect(isExpired({ exp: 101 }, 100_000)).toBe(false);
    expect(isExpired({}, 100_000)).toBe(false);
  });
});

describe("service URLs", () => {
  it.each([
    ["http://h:5001", "http://h:5001"],
    ["http://h:5001/", "http://h:5001"],
    ["ws://h:5001/ws", "http://h:5001"],
    ["wss://h/prefix/ws", "https://h/prefix"],
    ["https://h/prefix/events", "https://h/prefix"],
    ["/rt", "https://page.test/rt"],
    ["", "https://page.test"],
    [undefined, "https://page.test"],
  ])("resolveBase(%j) = %s", (url, expected) => {
    expect(resolveBase(url, "https://page.test/app?x=1")).toBe(expected);
  });

  it("builds endpoint URLs with encoded query values", () => {
    expect(webSocketUrl("https://h/p", { ticket: "a+b", events: "x,y" })).toBe("wss://h/p/ws?ticket=a%2Bb&events=x%2Cy");
    expect(endpoint("http://h", "/api/realtime/ticket")).toBe("http://h/api/realtime/ticket");
    expect(endpoint("http://h", "https://auth.test/ticket")).toBe("https://auth.test/ticket");
  });

  it("needs a url outside a page", () => {
    expect(() => resolveBase(undefined)).toThrow("url");
  });
});
