/** Small display helpers shared by the dashboard's lists. */

import { ApiError } from "../api";
import type { Translate } from "./i18n";

export function formatTime(iso: string, lang: string): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  return new Intl.DateTimeFormat(lang, { dateStyle: "short", timeStyle: "short" }).format(date);
}

/** A one-line message for a failed request, with the service's field errors when it sent them. */
export function describeError(error: unknown, t: Translate): string {
  if (error instanceof ApiError) {
    const fields = Object.entries(error.body?.fields ?? {}).map(([name, problem]) => `${name}: ${problem}`);
    return t("error", { message: fields.length ? fields.join("; ") : error.message });
  }
  return t("error", { message: error instanceof Error ? error.message : String(error) });
}
