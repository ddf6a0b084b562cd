import { describe, expect, it } from "vitest";
import { CloseCode, closeAction } from "../src/close-codes";

describe("close-code policy", () => {
  it.each([
    [CloseCode.NORMAL, { action: "stop", reason: "normal" }],
    [CloseCode.MESSAGE_TOO_BIG, { action: "stop", reason: "client_error" }],
    [CloseCode.SERVICE_RESTART, { action: "retry" }],
    [CloseCode.DISCONNECTED_BY_ADMIN, { action: "stop", reason: "disconnected" }],
    [CloseCode.BAD_MESSAGES, { action: "stop", reason: "client_error" }],
    [CloseCode.UNAUTHORIZED, { action: "reauth" }],
    [CloseCode.FORBIDDEN, { action: "stop", reason: "forbidden" }],
    [CloseCode.SLOW_CONSUMER, { action: "retry" }],
    [CloseCode.TOO_MANY_CONNECTIONS, { action: "retry" }],
    [CloseCode.ABNORMAL, { action: "retry" }],
    [CloseCode.GOING_AWAY, { action: "retry" }],
    [1011, { action: "retry" }],
    [4999, { action: "retry" }],
  ])("%i → %o", (code, expected) => {
    expect(closeAction(code)).toEqual(expected);
  });

  it("matches the documented close codes", () => {
    expect(CloseCode).toMatchObject({
      NORMAL: 1000,
      MESSAGE_TOO_BIG: 1009,
      SERVICE_RESTART: 1012,
      DISCONNECTED_BY_ADMIN: 4000,
      BAD_MESSAGES: 4400,
      UNAUTHORIZED: 4401,
      FORBIDDEN: 4403,
      SLOW_CONSUMER: 4408,
      TOO_MANY_CONNECTIONS: 4429,
    });
  });
});
