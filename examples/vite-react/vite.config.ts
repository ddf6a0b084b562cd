import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

// `@/…` is `src/…`, as in the product note's `import … from '@/hooks/use-realtime-tasks'`.
export default defineConfig({
  plugins: [react()],
  resolve: { alias: { "@": "/src" } },
});
