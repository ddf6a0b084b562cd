/** Dashboard entry: read the token, URL override and language, then render. */

import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { serviceUrl, takeTokenFromUrl } from "./boot";
import { applyLang, initialLang } from "./i18n";
import "./app.css";

function localStore(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

takeTokenFromUrl();
const storage = localStore();
const lang = initialLang(window.location.search, storage, navigator.language);
applyLang(lang);

const root = document.getElementById("root");
if (root) {
  createRoot(root).render(
    <StrictMode>
      <App initialLang={lang} url={serviceUrl()} storage={storage} />
    </StrictMode>,
  );
}
