/** Notifications about other users' actions: `role="alert"`, dismissed after a few seconds. */

import { useEffect } from "react";
import type { Translate } from "./i18n";

export interface ToastView {
  id: string;
  text: (t: Translate) => string;
}

const DISMISS_AFTER_MS = 6000;

function ToastItem(props: { toast: ToastView; t: Translate; onDismiss: (id: string) => void }) {
  const { toast, t, onDismiss } = props;
  useEffect(() => {
    const timer = setTimeout(() => onDismiss(toast.id), DISMISS_AFTER_MS);
    return () => clearTimeout(timer);
  }, [toast.id, onDismiss]);
  return (
    <div className="toast" role="alert">
      <span className="toast-text">{toast.text(t)}</span>
      <button type="button" className="toast-close" aria-label={t("dismiss")} onClick={() => onDismiss(toast.id)}>
        ×
      </button>
    </div>
  );
}

export function Toasts(props: { toasts: ToastView[]; t: Translate; onDismiss: (id: string) => void }) {
  const { toasts, t, onDismiss } = props;
  return (
    <div className="toasts" aria-label={t("notifications")}>
      {toasts.map((toast) => (
        <ToastItem key={toast.id} toast={toast} t={t} onDismiss={onDismiss} />
      ))}
    </div>
  );
}
