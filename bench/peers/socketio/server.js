"use strict";
// Socket.IO 4.8 as a peer for `python -m bench`: the same JWT check and event JSON as
// bench/naive_server.py, published by `POST /publish` and broadcast with `io.emit`.
//
//   BENCH_JWT_SECRET=... node server.js --port P [--workers N]
//
// One process by default; with --workers N > 1 a `cluster` primary forks N workers that share
// the listening socket (Node's round-robin hand-off, the primary accepts) and joins them with
// @socket.io/cluster-adapter, so an `io.emit` on the worker that took the POST reaches the
// clients of every worker. Transport: WebSocket only (no long-polling, so no sticky sessions
// are needed), no permessage-deflate.

const cluster = require("node:cluster");
const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter, setupPrimary } = require("@socket.io/cluster-adapter");

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at > 0 ? process.argv[at + 1] : fallback;
}

const port = Number(option("--port"));
const workers = Number(option("--workers", "1"));
const secret = process.env.BENCH_JWT_SECRET || "";
if (!port || !secret) {
  console.error("usage: BENCH_JWT_SECRET=... node server.js --port P [--workers N]");
  process.exit(2);
}

function decodePart(part) {
  return JSON.parse(Buffer.from(part, "base64url").toString("utf8"));
}

// HS256 only, `exp` and `sub` required: what the naive server asks of PyJWT.
function verify(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    if (decodePart(parts[0]).alg !== "HS256") return null;
    const expected = crypto.createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
    const given = Buffer.from(parts[2], "base64url");
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return null;
    const claims = decodePart(parts[1]);
    if (typeof claims.exp !== "number" || claims.exp <= Date.now() / 1000 || claims.sub === undefined) return null;
    return claims;
  } catch {
    return null;
  }
}

function serve() {
  let ids = 0;
  const server = http.createServer((request, response) => {
    if (request.method !== "POST" || request.url !== "/publish") {
      response.writeHead(404).end();
      return;
    }
    const chunks = [];
    request.on("data", (chunk) => chunks.push(chunk));
    request.on("end", () => {
      const fields = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      const ts = new Date().toISOString();
      io.emit("event", { id: String(++ids), ts, ...fields });
      response.writeHead(202).end();
    });
  });
  server.keepAliveTimeout = 0; // the bench's publisher keeps one connection for a whole phase
  const io = new Server(server, {
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    adapter: workers > 1 ? createAdapter() : undefined,
  });
  io.use((socket, next) => {
    const claims = verify(socket.handshake.query.token);
    if (claims === null) {
      next(new Error("invalid token"));
      return;
    }
    socket.data.userId = claims.sub;
    next();
  });
  server.listen({ port, host: "127.0.0.1", backlog: 4096 });
  // A worker whose primary is gone has nobody to share broadcasts with: exit with it.
  if (cluster.isWorker) process.on("disconnect", () => process.exit(0));
}

if (workers > 1 && cluster.isPrimary) {
  setupPrimary();
  const children = [];
  for (let i = 0; i < workers; i += 1) children.push(cluster.fork());
  const stop = () => {
    for (const child of children) child.process.kill("SIGTERM");
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  cluster.on("exit", (worker, code) => {
    console.error(`worker ${worker.process.pid} exited with ${code}`);
  });
} else {
  serve();
}
