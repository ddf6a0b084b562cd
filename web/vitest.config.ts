import { defineConfig } from "vitest/config";

// Client tests run in plain Node with fake transports; hook tests opt into happy-dom
// with a `@vitest-environment` comment. One worker keeps CPU use modest on 2 cores.
export default defineConfig({
  test: {
    include: ["test/**/*.test.{ts,tsx}"],
    environment: "node",
    pool: "threads",
    maxWorkers: 1,
    restoreMocks: true,
  },
});
