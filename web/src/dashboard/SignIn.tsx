/** The sign-in box: paste a token; it is kept in sessionStorage for this tab. */

import { useState, type FormEvent } from "react";
import { decodeJwtPayload, isExpired } from "../jwt";
import type { MessageKey, Translate } from "./i18n";

export function SignIn(props: { t: Translate; notice: MessageKey | null; onToken: (token: string) => void }) {
  const { t, onToken } = props;
  const [problem, setProblem] = useState<MessageKey | null>(props.notice);

  function submit(event: FormEvent<HTMLFormElement>): void {
    event.preventDefault();
    const token = String(new FormData(event.currentTarget).get("token") ?? "").trim();
    const claims = decodeJwtPayload(token);
    if (!claims) setProblem("signIn.invalid");
    else if (isExpired(claims)) setProblem("signIn.expired");
    else onToken(token);
  }

  return (
    <form className="card signin" onSubmit={submit}>
      <h2>{t("signIn.title")}</h2>
      {problem && <p className="notice">{t(problem)}</p>}
      <label htmlFor="token">{t("signIn.label")}</label>
      <textarea id="token" name="token" rows={4} required autoComplete="off" spellCheck={false} dir="ltr" />
      <p className="hint">{t("signIn.hint")}</p>
      <button type="submit">{t("signIn.submit")}</button>
    </form>
  );
}
