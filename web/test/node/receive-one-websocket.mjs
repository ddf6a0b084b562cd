// Node 20 over WebSocket: Node 20 has no global WebSocket, so pass the `ws` package's class as
// `WebSocketImpl` (it fits the client's WebSocketLike type, no cast). Prints `open websocket`,
// then the first `note` event as JSON, and exits.
// Usage: REALTIME_URL=http://127.0.0.1:5001 REALTIME_TOKEN=<jwt> node test/node/receive-one-websocket.mjs
import WebSocket from "ws";
import { createRealtimeClient } from "@realtime-tasks/web";

const client = createRealtimeClient({
  url: process.env.REALTIME_URL,
  getToken: () => process.env.REALTIME_TOKEN,
  WebSocketImpl: WebSocket,
  transports: ["websocket"],
  storage: null,
});
client.onStatus(({ status, transport }) => status === "open" && console.log(`open ${transport}`));
client.on("note", (event) => {
  console.log(JSON.stringify(event));
  client.close();
});
