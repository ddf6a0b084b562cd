// @vitest-environment happy-dom
/** The dashboard sends the user's token only to its own origin or a configured one (issue 12, item 6). */

import { afterEach, describe, expect, it, vi } from "vitest";
import { configuredServiceUrl, SERVICE_URL_META, serviceUrl } from "../src/dashboard/boot";

const PAGE = "https://dash.example/";

afterEach(() => {
  document.head.querySelectorAll(`meta[name="${SERVICE_URL_META}"]`).forEach((meta) => meta.remove());
  vi.unstubAllGlobals();
});

function addMeta(content: string): void {
  const meta = document.createElement("meta");
  meta.name = SERVICE_URL_META;
  meta.content = content;
  document.head.append(meta);
}

describe("serviceUrl", () => {
  it("is this page's origin when nothing is configured", () => {
    expect(serviceUrl("", PAGE, undefined)).toBeUndefined();
  });

  it("ignores a ?ws= link pointing at another origin", () => {
    expect(serviceUrl("?ws=wss%3A%2F%2Fevil.example%2Fws", PAGE, undefined)).toBeUndefined();
    expect(serviceUrl("?ws=https%3A%2F%2Fevil.example", PAGE, "https://events.example")).toBe("https://events.example");
  });

  it("ignores ?ws= on the same host over the other scheme or port", () => {
    expect(serviceUrl("?ws=ws%3A%2F%2Fdash.example%2Fws", PAGE, undefined)).toBeUndefined();
    expect(serviceUrl("?ws=wss%3A%2F%2Fdash.example%3A8443%2Fws", PAGE, undefined)).toBeUndefined();
  });

  it("ignores a protocol-relative or malformed ?ws=", () => {
    expect(serviceUrl("?ws=%2F%2Fevil.example%2Fws", PAGE, undefined)).toBeUndefined();
    expect(serviceUrl("?ws=http%3A%2F%2F%5B", PAGE, undefined)).toBeUndefined();
  });

  it("accepts ?ws= on this page's origin or the configured service's", () => {
    expect(serviceUrl("?ws=%2Fprefix", PAGE, undefined)).toBe("/prefix");
    expect(serviceUrl("?ws=wss%3A%2F%2Fdash.example%2Fws", PAGE, undefined)).toBe("wss://dash.example/ws");
    expect(serviceUrl("?ws=wss%3A%2F%2Fevents.example%2Fv2%2Fws", PAGE, "https://events.example")).toBe(
      "wss://events.example/v2/ws",
    );
  });

  it("uses the configured service when there is no ?ws=", () => {
    expect(serviceUrl("", PAGE, "https://events.example")).toBe("https://events.example");
  });
});

describe("configuredServiceUrl", () => {
  it("reads the meta tag the service writes into the page", () => {
    expect(configuredServiceUrl(document)).toBeUndefined();
    addMeta("https://events.example/rt");
    expect(configuredServiceUrl(document)).toBe("https://events.example/rt");
  });

  it("does not take a page global (window.REALTIME_URL) as configuration", () => {
    vi.stubGlobal("REALTIME_URL", "https://evil.example");
    expect(configuredServiceUrl(document)).toBeUndefined();
    expect(serviceUrl("", PAGE)).toBeUndefined();
  });
});
