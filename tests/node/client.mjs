// A Node.js client no Python code wrote: loads proto/ with @grpc/proto-loader and calls the
// daemon with @grpc/grpc-js; JSON values go through lossless-json, error details through
// protobufjs (proto-loader's own dependency) and googleapis' google/rpc protos.
// Usage: node client.mjs HOST:PORT WELL_KNOWN_PROTOS_DIR GOOGLEAPIS_PROTOS_DIR
// Prints one JSON object with what it saw; exits non-zero on any unexpected outcome. The
// README's "Node.js" section shows parts of this file verbatim (tests/test_node_client.py
// checks that), so keep the two in step.
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [addr, wellKnown, googleapis] = process.argv.slice(2);
const protoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "proto");
// The packages are under .tools/node_modules (the Makefile installs them there).
const require = createRequire(join(process.cwd(), ".tools", "node_modules", "x.js"));

// -- README: packages --------------------------------------------------------------------------
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const { parse, stringify, isInteger, isLosslessNumber, LosslessNumber } = require("lossless-json");
// protobufjs, for the error details, as @grpc/proto-loader (which depends on it) resolves it.
const protobuf = createRequire(require.resolve("@grpc/proto-loader"))("protobufjs");
// -- end ---------------------------------------------------------------------------------------

// -- README: loading the API -------------------------------------------------------------------
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
const state = new v1.StateService(addr, credentials);
const collections = new v1.CollectionService(addr, credentials);
const watch = new v1.WatchService(addr, credentials);

const call = (client, method, request) => new Promise((resolve, reject) =>
  client[method](request, { deadline: Date.now() + 10000 }, (err, res) => (err ? reject(err) : resolve(res))));
// -- end ---------------------------------------------------------------------------------------

// -- README: JSON values -----------------------------------------------------------------------
// JSON.parse would round 2**60 + 1 and read 4.0 as 4. parseJson reads integers as BigInt
// (exact over the whole int64 range) and every other number as a LosslessNumber, which keeps
// its text: 4.0 stays the float 4.0 (Number(x) gives the double).
const parseJson = (text) => (text === "" ? undefined
  : parse(text, null, (n) => (isInteger(n) ? BigInt(n) : new LosslessNumber(n))));
// toJson writes BigInt and LosslessNumber as their digits, a JS number as JSON.stringify does
// (so a whole one is an integer: write new LosslessNumber("4.0") for the float 4.0).
const toJson = (value) => stringify(value);
const numberKind = (x) => (typeof x === "bigint" ? "integer" : isLosslessNumber(x) ? "float" : typeof x);
// -- end ---------------------------------------------------------------------------------------

// -- README: error details ---------------------------------------------------------------------
// googleapis is a folder holding google/rpc/status.proto and google/rpc/error_details.proto.
const rpc = new protobuf.Root();
rpc.resolvePath = (origin, target) =>
  [googleapis, wellKnown].map((dir) => join(dir, target)).find((p) => existsSync(p)) ?? target;
rpc.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpc.lookupType("google.rpc.Status");
const ErrorInfo = rpc.lookupType("google.rpc.ErrorInfo");

// The google.rpc.ErrorInfo of a failed call: { reason, domain, metadata: { field, ... } }.
function errorInfo(err) {
  const [bytes] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bytes) return undefined;
  const any = Status.decode(bytes).details
    .find((d) => d.type_url === "type.googleapis.com/google.rpc.ErrorInfo");
  return any && ErrorInfo.toObject(ErrorInfo.decode(any.value), { defaults: true });
}
// -- end ---------------------------------------------------------------------------------------

// -- README: watching --------------------------------------------------------------------------
// The first `count` changes from start_revision 1 (the replay), then the stream is cancelled.
function firstChanges(request, count) {
  return new Promise((resolve, reject) => {
    const seen = [];
    const stream = watch.Watch({ start_revision: "1", ...request });
    stream.on("data", (response) => {
      seen.push(...response.changes);
      if (seen.length >= count) { stream.cancel(); resolve(seen.slice(0, count)); }
    });
    stream.on("error", (err) => { if (err.code !== grpc.status.CANCELLED) reject(err); });
    stream.on("end", () => reject(new Error(`the stream ended after ${seen.length} changes`)));
  });
}
// -- end ---------------------------------------------------------------------------------------

/** The code, message and ErrorInfo of a call that must fail. */
async function failure(promise) {
  try {
    await promise;
  } catch (err) {
    const info = errorInfo(err);
    return { code: grpc.status[err.code], details: err.details, reason: info?.reason,
      domain: info?.domain, field: info?.metadata.field, metadata: info?.metadata };
  }
  throw new Error("the call succeeded");
}

const result = {};

// -- memories: attributes through attributes_json, the Struct still answers ------------------
const namespace = "node-client";
// -- README: writing and reading JSON values ---------------------------------------------------
// int64 bounds and 2**60 + 1 as BigInt, the floats as LosslessNumber (in JavaScript 4.0 is 4).
const VALUE = {
  step: 4n, ids: [2n ** 60n + 1n, -7n, 9223372036854775807n, -9223372036854775808n],
  ratio: new LosslessNumber("0.5"), whole: new LosslessNumber("4.0"), done: false, note: null,
  nested: [[1n, { a: "é" }]],
};
const attributesJson = toJson({ lang: "js", ...VALUE });
const added = await call(memories, "AddMemory", {
  namespace, content: "Added from Node.js", category: "MEMORY_CATEGORY_FACT",
  source: "MEMORY_SOURCE_USER_EXPLICIT", attributes_json: attributesJson,
});
const afterCreate = (await call(memories, "GetMemory", { namespace, id: added.memory.id })).memory;
assert.equal(afterCreate.attributes_json, attributesJson); // the same text back
const attributes = parseJson(afterCreate.attributes_json);
assert.deepEqual(attributes, { lang: "js", ...VALUE });
assert.equal(attributes.ids[0], 1152921504606846977n);
assert.equal(numberKind(attributes.step), "integer");
assert.equal(numberKind(attributes.whole), "float");
assert.equal(String(attributes.whole), "4.0");
// -- end ---------------------------------------------------------------------------------------
result.added = added.memory;
result.attributesJson = attributesJson;
assert.equal(added.memory.attributes_json, attributesJson);
assert.equal(attributes.ids[2], 2n ** 63n - 1n);
assert.equal(toJson(attributes), attributesJson);

const again = await call(memories, "AddMemory", {
  namespace, content: "  added FROM node.js ", category: "MEMORY_CATEGORY_FACT",
  source: "MEMORY_SOURCE_USER_EXPLICIT",
});
result.deduplicated = again.deduplicated && again.memory.id === added.memory.id;
const afterUpdate = (await call(memories, "GetMemory", { namespace, id: added.memory.id })).memory;
result.got = afterUpdate.content;
result.listed = (await call(memories, "ListMemories", { namespace, page_size: 10 })).memories.length;
result.notFound = await failure(call(memories, "GetMemory", { namespace, id: "999999" }));
result.invalid = await failure(call(memories, "AddMemory", { namespace, content: " ",
  category: "MEMORY_CATEGORY_FACT", source: "MEMORY_SOURCE_USER_EXPLICIT" }));
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
result.mismatch = await failure(call(memories, "SearchMemories", { namespace,
  mode: "SEARCH_MODE_VECTOR", embedding: [1.0, 2.0] }));

// -- state: value_json, written here and read back; a value Python wrote -----------------------
const ns = "node-json";
const valueJson = toJson(VALUE);
const put = await call(state, "PutState", { namespace: ns, key: "from-node", value_json: valueJson });
const got = await call(state, "GetState", { namespace: ns, key: "from-node" });
assert.equal(put.entry.value_json, valueJson);
assert.equal(got.entry.value_json, valueJson);
assert.deepEqual(parseJson(got.entry.value_json), VALUE);
result.state = { written: valueJson, read: got.entry.value_json, version: got.entry.version };
for (const root of ["9223372036854775807", "-9223372036854775808", "4.0", "null", '"x"']) {
  await call(state, "PutState", { namespace: ns, key: "root", value_json: root });
  const entry = (await call(state, "GetState", { namespace: ns, key: "root" })).entry;
  assert.equal(entry.value_json, root);
  assert.equal(toJson(parseJson(entry.value_json)), root);
}
// The Python test wrote this one, with floats such as 4.0 and 0.5 next to integers.
const fromPython = (await call(state, "GetState", { namespace: ns, key: "from-python" })).entry;
const pythonValue = parseJson(fromPython.value_json);
result.fromPython = {
  text: fromPython.value_json,
  kinds: Object.fromEntries(Object.entries(pythonValue).map(([k, x]) => [k, numberKind(x)])),
  texts: Object.fromEntries(Object.entries(pythonValue).map(([k, x]) => [k, String(x)])),
};
// Written back unchanged, for the Python test to read.
const echo = await call(state, "PutState", { namespace: ns, key: "echo", value_json: toJson(pythonValue) });
assert.equal(echo.entry.value_json, fromPython.value_json);

// -- README: NaN is refused -------------------------------------------------------------------
const refused = await call(state, "PutState", { namespace: ns, key: "bad", value_json: '{"x": NaN}' })
  .then(() => undefined, (err) => err);
assert.equal(refused?.code, grpc.status.INVALID_ARGUMENT);
const info = errorInfo(refused);
console.error(info.reason, info.domain, info.metadata.field); // INVALID_ARGUMENT jarvis-memory value.x
// -- end ---------------------------------------------------------------------------------------
result.nan = { code: grpc.status[refused.code], details: refused.details, ...info };

// -- README: collections -----------------------------------------------------------------------
await call(collections, "CreateCollection", { namespace: ns, name: "trades", fields: [
  { name: "symbol", type: "FIELD_TYPE_STRING", required: true },
  { name: "qty", type: "FIELD_TYPE_INTEGER", indexed: true },
  { name: "meta", type: "FIELD_TYPE_JSON" },
  { name: "at", type: "FIELD_TYPE_TIMESTAMP" },
] });
const inserted = await call(collections, "InsertRows", { namespace: ns, collection: "trades",
  typed_rows: [
    { fields: {
      symbol: { string_value: "ETH" },
      qty: { integer_value: "1152921504606846976" }, // int64 as a string: 2**60
      meta: { json_value: toJson({ fee: new LosslessNumber("4.0"), lots: [2n ** 60n + 1n] }) },
      at: { timestamp_value: { seconds: "1795000000", nanos: 123456000 } },
    } },
    { fields: { symbol: { string_value: "BTC" }, qty: { integer_value: "1152921504606846977" } } },
  ] });
const { rows } = await call(collections, "QueryRows", { namespace: ns, collection: "trades",
  filters: [{ field: "qty", op: "FILTER_OPERATOR_GE", typed_value: { integer_value: "1152921504606846977" } }] });
// rows[0].fields.qty is { integer_value: "1152921504606846977", kind: "integer_value" }
// rows[0].fields.at is { null_value: "NULL_VALUE", kind: "null_value" }
// -- end ---------------------------------------------------------------------------------------
assert.deepEqual(rows.map((r) => r.id), [inserted.ids[1]]);
assert.deepEqual(rows[0].fields.qty, { integer_value: "1152921504606846977", kind: "integer_value" });
assert.deepEqual(rows[0].fields.at, { null_value: "NULL_VALUE", kind: "null_value" });
const all = (await call(collections, "QueryRows", { namespace: ns, collection: "trades",
  order_by: [{ field: "qty" }] })).rows;
assert.deepEqual(all.map((r) => r.id), inserted.ids);
const kinds = (row) => Object.fromEntries(Object.entries(row.fields).map(([k, v]) => [k, v.kind]));
result.collection = {
  ids: inserted.ids,
  filtered: rows.map((r) => r.fields.qty.integer_value),
  kinds: all.map(kinds),
  qty: all.map((r) => r.fields.qty.integer_value),
  meta: all[0].fields.meta.json_value,
  metaKinds: Object.fromEntries(Object.entries(parseJson(all[0].fields.meta.json_value))
    .map(([k, x]) => [k, numberKind(x)])),
  lot: String(parseJson(all[0].fields.meta.json_value).lots[0]),
  at: all[0].fields.at.timestamp_value,
  nullAt: all[1].fields.at,
};

// -- watch: typed changes equal to what Get/Query returned -------------------------------------
const feed = await firstChanges({ namespace }, 5);
result.changes = feed.map((c) => `${c.kind}:${c.operation}`);
result.typed = feed.map((c) => c.typed_resource);
assert.deepEqual(feed[0].memory, afterCreate);
assert.deepEqual(feed[1].memory, afterUpdate);
assert.equal(feed[0].memory.attributes_json, attributesJson);
result.watchedMemory = feed[0].memory;
result.gotMemory = afterCreate;
// -- README: reading a change ------------------------------------------------------------------
const [change] = await firstChanges({ namespace, kinds: ["memory"] }, 1);
// change.typed_resource names the field that holds the resource ("memory" here, the kind);
// a delete sets none: change.key says what was deleted.
assert.equal(change.typed_resource, "memory");
const memory = change[change.typed_resource]; // the message GetMemory returns
const fromFeed = parseJson(memory.attributes_json);
// -- end ---------------------------------------------------------------------------------------
assert.deepEqual(memory, afterCreate);
assert.deepEqual(fromFeed, { lang: "js", ...VALUE });
// (the Python test's "from-python" came first)
const stateChange = (await firstChanges({ namespace: ns, kinds: ["state"] }, 2))[1];
assert.equal(stateChange.key, "from-node");
assert.equal(stateChange.typed_resource, "state");
assert.deepEqual(stateChange.state, got.entry);
const rowFeed = await firstChanges({ namespace: ns, kinds: ["row"] }, 2);
assert.deepEqual(rowFeed.map((c) => c.typed_resource), ["row", "row"]);
assert.deepEqual(rowFeed.map((c) => c.row), all);
result.rowChange = rowFeed[0].row;
result.unknownKind = await failure(firstChanges({ namespace, kinds: ["memory", "memorys"] }, 1));

console.log(JSON.stringify(result));
for (const client of [memories, sessions, state, collections, watch]) client.close();
