/** The page shell: title, language switch, and either the sign-in box or the dashboard. */

import { useCallback, useEffect, useMemo, useState } from "react";
import { isExpired } from "../jwt";
import { storeToken } from "../token-store";
import { currentSession, type Session } from "./boot";
import { Dashboard } from "./Dashboard";
import { applyLang, rememberLang, translator, type Lang, type MessageKey } from "./i18n";
import { SignIn } from "./SignIn";

export function App(props: { initialLang: Lang; url: string | undefined; storage: Pick<Storage, "setItem"> | null }) {
  const { url, storage } = props;
  const [lang, setLang] = useState<Lang>(props.initialLang);
  const [session, setSession] = useState<Session | null>(() => currentSession());
  const [notice, setNotice] = useState<MessageKey | null>(() =>
    session && isExpired(session.claims) ? "signIn.expired" : null,
  );
  const t = useMemo(() => translator(lang), [lang]);

  useEffect(() => {
    applyLang(lang);
    rememberLang(lang, storage);
  }, [lang, storage]);

  const signOut = useCallback((reason: MessageKey | null) => {
    storeToken(null);
    setSession(null);
    setNotice(reason);
  }, []);

  const signIn = useCallback((token: string) => {
    storeToken(token);
    setSession(currentSession() ?? { token, claims: null });
    setNotice(null);
  }, []);

  const active = session && !isExpired(session.claims) ? session : null;
  return (
    <div className="app">
      <header className="topbar">
        <h1>{t("appTitle")}</h1>
        <button type="button" className="lang" lang={lang === "ar" ? "en" : "ar"} onClick={() => setLang(lang === "ar" ? "en" : "ar")}>
          {t("switchLanguage")}
        </button>
      </header>
      {active ? (
        <Dashboard key={active.token} session={active} url={url} lang={lang} t={t} onSignOut={signOut} />
      ) : (
        <SignIn key={notice ?? "none"} t={t} notice={notice} onToken={signIn} />
      )}
    </div>
  );
}
