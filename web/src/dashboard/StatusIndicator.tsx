/** The connection indicator: `role="status"` with `data-status` connected | reconnecting | offline. */

import { useSyncExternalStore } from "react";
import type { Status } from "../client";
import type { TransportName } from "../events";
import type { Translate } from "./i18n";

export type Indicator = "connected" | "reconnecting" | "offline";

export function indicatorFor(status: Status, browserOnline: boolean): Indicator {
  if (status === "open") return "connected";
  if (status === "closed" || !browserOnline) return "offline";
  return "reconnecting";
}

function subscribeOnline(notify: () => void): () => void {
  window.addEventListener("online", notify);
  window.addEventListener("offline", notify);
  return () => {
    window.removeEventListener("online", notify);
    window.removeEventListener("offline", notify);
  };
}

export function StatusIndicator(props: { status: Status; transport: TransportName | null; t: Translate }) {
  const { status, transport, t } = props;
  const online = useSyncExternalStore(subscribeOnline, () => navigator.onLine, () => true);
  const indicator = indicatorFor(status, online);
  const label = status === "connecting" && online ? t("status.connecting") : t(`status.${indicator}`);
  return (
    <div className="status" role="status" aria-live="polite" data-status={indicator} data-transport={transport ?? ""}>
      <span className="status-dot" aria-hidden="true" />
      <span className="status-label">{label}</span>
      {transport && indicator !== "offline" && (
        <span className="status-transport">{t("via", { transport: t(`transport.${transport}`) })}</span>
      )}
    </div>
  );
}
