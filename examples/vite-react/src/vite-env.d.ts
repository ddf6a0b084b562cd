/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** The realtime service, e.g. `ws://localhost:5001` (from `.env`). */
  readonly VITE_WS_URL?: string;
}

interface ImportMeta {
  readonly env: ImportMetaEnv;
}
