// A Node.js client no Python code wrote: loads proto/ with @grpc/proto-loader and calls the
// daemon with @grpc/grpc-js. Usage: node client.mjs HOST:PORT WELL_KNOWN_PROTOS_DIR
// Prints one JSON object with what it saw; exits non-zero on any unexpected outcome.
import { readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(join(process.cwd(), ".tools", "node_modules", "x.js"));
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [addr, wellKnown] = process.argv.slice(2);
const protoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");
const files = readdirSync(join(protoRoot, "jarvis", "memory", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .map((f) => `jarvis/memory/v1/${f}`);
const definition = protoLoader.loadSync(files, {
  includeDirs: [protoRoot, wellKnown], keepCase: true, longs: String, enums: String,
  defaults: true, oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).jarvis.memory.v1;
const credentials = grpc.credentials.createInsecure();
const memories = new v1.MemoryService(addr, credentials);
const sessions = new v1.SessionService(addr, credentials);
const watch = new v1.WatchService(addr, credentials);

const call = (client, method, request) => new Promise((resolve, reject) =>
  client[method](request, { deadline: Date.now() + 10000 }, (err, res) => (err ? reject(err) : resolve(res))));

const result = {};
const namespace = "node-client";
const added = await call(memories, "AddMemory", {
  namespace, content: "Added from Node.js", category: "MEMORY_CATEGORY_FACT",
  source: "MEMORY_SOURCE_USER_EXPLICIT", attributes: { fields: { lang: { stringValue: "js" } } },
});
result.added = added.memory;
const again = await call(memories, "AddMemory", {
  namespace, content: "  added FROM node.js ", category: "MEMORY_CATEGORY_FACT",
  source: "MEMORY_SOURCE_USER_EXPLICIT",
});
result.deduplicated = again.deduplicated && again.memory.id === added.memory.id;
result.got = (await call(memories, "GetMemory", { namespace, id: added.memory.id })).memory.content;
result.listed = (await call(memories, "ListMemories", { namespace, page_size: 10 })).memories.length;
try {
  await call(memories, "GetMemory", { namespace, id: "999999" });
  result.notFound = "no error";
} catch (err) {
  result.notFound = err.code === grpc.status.NOT_FOUND ? "NOT_FOUND" : `code ${err.code}`;
}
try {
  await call(memories, "AddMemory", { namespace, content: " ", category: "MEMORY_CATEGORY_FACT",
    source: "MEMORY_SOURCE_USER_EXPLICIT" });
  result.invalid = "no error";
} catch (err) {
  result.invalid = err.code === grpc.status.INVALID_ARGUMENT ? err.details : `code ${err.code}`;
}
const session = (await call(sessions, "StartSession", { namespace, session_id: "node-tab" })).session;
await call(sessions, "AppendMessage", { namespace, session_id: session.id,
  role: "MESSAGE_ROLE_USER", content: "hello from node" });
result.messages = (await call(sessions, "ListMessages", { namespace, session_id: session.id }))
  .messages.map((m) => m.content);

// Search: keyword with a snippet, and hybrid with an embedding sent as a plain JS array.
const keyword = await call(memories, "SearchMemories", { namespace, query: "node.js", limit: 5 });
result.searched = keyword.hits.map((h) => h.snippet);
const withVector = await call(memories, "AddMemory", {
  namespace, content: "Vectors from Node", category: "MEMORY_CATEGORY_FACT",
  source: "MEMORY_SOURCE_USER_EXPLICIT", embedding: [0.5, 0.25, 1.0],
});
const hybrid = await call(memories, "SearchMemories", {
  namespace, query: "vectors", mode: "SEARCH_MODE_HYBRID", embedding: [0.5, 0.25, 1.0], limit: 5,
});
result.hybrid = hybrid.hits.map((h) => [h.memory.id === withVector.memory.id, h.score > 0]);
try {
  await call(memories, "SearchMemories", { namespace, mode: "SEARCH_MODE_VECTOR",
    embedding: [1.0, 2.0] });
  result.mismatch = "no error";
} catch (err) {
  result.mismatch = err.code === grpc.status.INVALID_ARGUMENT ? err.details : `code ${err.code}`;
}

// Watch: replay this namespace's changes from revision 1, take five, then cancel.
result.changes = await new Promise((resolve, reject) => {
  const seen = [];
  const stream = watch.Watch({ namespace, start_revision: "1" });
  stream.on("data", (response) => {
    for (const change of response.changes) {
      if (seen.length < 5) seen.push(`${change.kind}:${change.operation}`);
    }
    if (seen.length === 5) { stream.cancel(); resolve(seen); }
  });
  stream.on("error", (err) => { if (err.code !== grpc.status.CANCELLED) reject(err); });
});
console.log(JSON.stringify(result));
memories.close(); sessions.close(); watch.close();
