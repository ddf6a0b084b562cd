// Node 20, no React, no browser globals: import the package root, follow the stream, print the
// first `note` event as JSON and exit. Node 20 has fetch but no WebSocket or EventSource, so
// the client uses long-polling (asked for here, so without a warning); receive-one-websocket.mjs
// passes the `ws` package as `WebSocketImpl` instead.
// Usage: REALTIME_URL=http://127.0.0.1:5001 REALTIME_TOKEN=<jwt> node test/node/receive-one.mjs
import { createRealtimeClient } from "@realtime-tasks/web";

const client = createRealtimeClient({
  url: process.env.REALTIME_URL,
  getToken: () => process.env.REALTIME_TOKEN,
  transports: ["poll"],
  storage: null,
});
client.onStatus(({ status }) => status === "open" && console.log("open"));
client.on("note", (event) => {
  console.log(JSON.stringify(event));
  client.close();
});
