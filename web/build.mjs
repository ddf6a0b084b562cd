// Builds web/dist: the dashboard (index.html, app.js, app.css) and the ESM libraries
// client.js (client alone) and hooks.js (client + hooks, React external). Prints sizes.
import { copyFile, mkdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
const target = "es2022";

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

await esbuild.build({
  absWorkingDir: root,
  entryPoints: { app: "src/dashboard/main.tsx" },
  outdir: dist,
  bundle: true,
  minify: true,
  format: "iife",
  target,
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  legalComments: "none",
  logLevel: "warning",
});

await esbuild.build({
  absWorkingDir: root,
  entryPoints: { client: "src/client-entry.ts", hooks: "src/index.ts" },
  outdir: dist,
  bundle: true,
  minify: true,
  format: "esm",
  target,
  external: ["react", "react-dom", "react/jsx-runtime"],
  logLevel: "warning",
});

await copyFile(join(root, "src/dashboard/index.html"), join(dist, "index.html"));

for (const name of ["client.js", "hooks.js", "app.js", "app.css", "index.html"]) {
  const bytes = await readFile(join(dist, name));
  const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(`dist/${name.padEnd(10)} ${kib(bytes.length).padStart(9)}  gzip ${kib(gzipSync(bytes, { level: 9 }).length).padStart(8)}`);
}
