// A form's submit as an async action: busy while it runs, its error shown in the user's language.
import { useState, type FormEvent } from "react";
import { describeError } from "./format";
import type { Translate } from "./i18n";

export function useFormAction(
  t: Translate,
  action: (form: HTMLFormElement, data: FormData) => Promise<void>,
): { busy: boolean; error: string | null; onSubmit: (event: FormEvent<HTMLFormElement>) => void } {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function run(form: HTMLFormElement): Promise<void> {
    setBusy(true);
    setError(null);
    try {
      await action(form, new FormData(form));
    } catch (caught) {
      setError(describeError(caught, t));
    } finally {
      setBusy(false);
    }
  }

  function onSubmit(event: FormEvent<HTMLFormElement>): void {
    event.preventDefault();
    void run(event.currentTarget);
  }

  return { busy, error, onSubmit };
}
