// Reads and writes cim-nats events with the official JavaScript NATS client
// (@nats-io/jetstream, @nats-io/transport-node), checking them against docs/wire-format.md.
//
//   node conformance.mjs read  --server nats://127.0.0.1:4222 --domain bank
//   node conformance.mjs write --server nats://127.0.0.1:4222 --domain bank
//
// `read` reads every message of the stream `{DOMAIN}_EVENTS` through an ordered consumer and
// checks each against the specification; it prints a JSON summary and exits 1 on any mismatch.
// `write` appends events to a new aggregate of the domain as the specification says (a first
// event expecting sequence 0, a second expecting the first's sequence, a refused stale
// expectation, a retry recognised as stored, an atomic batch of two events and its refused
// retry); it prints what it stored as JSON and exits 1 when the server answers otherwise than
// the specification says.

import { randomUUID } from "node:crypto";
import { connect, headers as newHeaders } from "@nats-io/transport-node";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";

const CLIENT = "@nats-io/jetstream 3.4.0";

// Header names (docs/wire-format.md, "Headers").
const MSG_ID = "Nats-Msg-Id";
const EVENT_TYPE = "Cim-Event-Type";
const EVENT_VERSION = "Cim-Event-Version";
const AGGREGATE_TYPE = "Cim-Aggregate-Type";
const AGGREGATE_ID = "Cim-Aggregate-Id";
const AGGREGATE_VERSION = "Cim-Aggregate-Version";
const CORRELATION_ID = "Cim-Correlation-Id";
const CAUSATION_ID = "Cim-Causation-Id";
const ACTOR = "Cim-Actor";
const TIMESTAMP = "Cim-Timestamp";
const CONTENT_TYPE = "Content-Type";
const EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject";
const BATCH_ID = "Nats-Batch-Id";
const BATCH_SEQUENCE = "Nats-Batch-Sequence";
const BATCH_COMMIT = "Nats-Batch-Commit";
const CHECK_AGGREGATE = "Cim-Check-Aggregate-Id";
const TRACEPARENT = "traceparent";

// Error codes (docs/wire-format.md, "Errors").
const WRONG_LAST_SEQUENCE = 10071;
const BATCH_DUPLICATE = 10201;

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const RFC3339_RE = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
const DECIMAL_RE = /^(0|[1-9][0-9]*)$/;
const TRACEPARENT_RE = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;
const MAX_TOKEN = 256;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function streamName(domain) {
  return `${domain.toUpperCase().replaceAll("-", "_")}_EVENTS`;
}

function tokenProblem(token) {
  if (!token) return "empty token";
  if (encoder.encode(token).length > MAX_TOKEN) return `token longer than ${MAX_TOKEN} bytes`;
  for (const c of token) {
    if (".*>".includes(c) || /\s/u.test(c) || c.charCodeAt(0) < 32 || c.charCodeAt(0) === 127) {
      return `token ${JSON.stringify(token)} contains ${JSON.stringify(c)}`;
    }
  }
  return null;
}

function isTimestamp(value) {
  return RFC3339_RE.test(value) && !Number.isNaN(Date.parse(value.toUpperCase()));
}

/** A header map as a plain object (the last value of each name). */
function plain(h) {
  const out = {};
  if (!h) return out;
  for (const [k, values] of h) out[k] = values[values.length - 1];
  return out;
}

function checkMessage(domain, subject, headers, body, lastVersions) {
  const reasons = [];
  const tokens = subject.split(".");
  if (subject === `${domain}._cim.check`) {
    const agg = headers[CHECK_AGGREGATE];
    if (agg === undefined || tokenProblem(agg)) reasons.push(`check marker without a valid ${CHECK_AGGREGATE}`);
    if (!DECIMAL_RE.test(headers[EXPECTED_SEQ] ?? "")) reasons.push(`check marker without a decimal ${EXPECTED_SEQ}`);
    if (headers[EXPECTED_SUBJECT] !== `${domain}.*.*.${agg}`) {
      reasons.push(`check marker's ${EXPECTED_SUBJECT} is not ${domain}.*.*.${agg}`);
    }
    if (body.length > 0) reasons.push("check marker with a body");
    return ["marker", reasons];
  }
  if (tokens.length !== 4 || tokens[0] !== domain) {
    return ["event", [`subject ${JSON.stringify(subject)} is not ${domain}.{aggregate}.{operation}.{aggregate_id}`]];
  }
  for (const t of tokens) {
    const problem = tokenProblem(t);
    if (problem) reasons.push(`subject: ${problem}`);
  }
  const [, entity, , aggregateId] = tokens;
  if (entity.startsWith("_")) reasons.push(`entity kind ${JSON.stringify(entity)} is reserved (starts with _)`);
  const required = (name) => {
    const value = headers[name];
    if (value === undefined) reasons.push(`header ${name} is missing`);
    return value;
  };
  const msgId = required(MSG_ID);
  if (msgId !== undefined && !UUID_RE.test(msgId)) reasons.push(`${MSG_ID} ${JSON.stringify(msgId)} is not a UUID`);
  const eventType = required(EVENT_TYPE);
  if (eventType === "") reasons.push(`${EVENT_TYPE} is empty`);
  const eventVersion = required(EVENT_VERSION);
  if (eventVersion !== undefined && (!DECIMAL_RE.test(eventVersion) || Number(eventVersion) > 2 ** 32 - 1)) {
    reasons.push(`${EVENT_VERSION} ${JSON.stringify(eventVersion)} is not a u32`);
  }
  const kind = required(AGGREGATE_TYPE);
  if (kind !== undefined && kind !== entity) {
    reasons.push(`${AGGREGATE_TYPE} ${JSON.stringify(kind)} is not the subject's entity kind ${JSON.stringify(entity)}`);
  }
  const agg = required(AGGREGATE_ID);
  if (agg !== undefined && agg !== aggregateId) {
    reasons.push(`${AGGREGATE_ID} ${JSON.stringify(agg)} is not the subject's aggregate id ${JSON.stringify(aggregateId)}`);
  }
  const version = required(AGGREGATE_VERSION);
  if (version !== undefined) {
    if (!DECIMAL_RE.test(version) || BigInt(version) > 2n ** 64n - 1n) {
      reasons.push(`${AGGREGATE_VERSION} ${JSON.stringify(version)} is not a u64`);
    } else {
      const v = BigInt(version);
      const previous = lastVersions.get(aggregateId) ?? 0n;
      if (v !== previous + 1n) {
        reasons.push(
          `${AGGREGATE_VERSION} ${v} of aggregate ${aggregateId} follows version ${previous} (expected ${previous + 1n})`,
        );
      }
      lastVersions.set(aggregateId, v > previous ? v : previous);
    }
  }
  const timestamp = required(TIMESTAMP);
  if (timestamp !== undefined && !isTimestamp(timestamp)) {
    reasons.push(`${TIMESTAMP} ${JSON.stringify(timestamp)} is not RFC 3339`);
  }
  const contentType = required(CONTENT_TYPE);
  if (contentType !== undefined && contentType !== "application/json") {
    reasons.push(`${CONTENT_TYPE} ${JSON.stringify(contentType)} is not application/json`);
  }
  for (const name of [CORRELATION_ID, CAUSATION_ID]) {
    const value = headers[name];
    if (value !== undefined && !UUID_RE.test(value)) reasons.push(`${name} ${JSON.stringify(value)} is not a UUID`);
  }
  if (headers[EXPECTED_SEQ] !== undefined) {
    if (!DECIMAL_RE.test(headers[EXPECTED_SEQ])) reasons.push(`${EXPECTED_SEQ} ${JSON.stringify(headers[EXPECTED_SEQ])} is not a sequence`);
    const scope = headers[EXPECTED_SUBJECT];
    if (scope !== undefined && !scope.startsWith(`${domain}.*.*.`)) {
      reasons.push(`${EXPECTED_SUBJECT} ${JSON.stringify(scope)} is not ${domain}.*.*.{aggregate_id}`);
    }
  }
  if (headers[BATCH_ID] !== undefined) {
    const position = headers[BATCH_SEQUENCE] ?? "";
    if (!DECIMAL_RE.test(position) || position === "0") {
      reasons.push(`${BATCH_SEQUENCE} ${JSON.stringify(headers[BATCH_SEQUENCE])} is not a position from 1`);
    }
    if (headers[BATCH_COMMIT] !== undefined && headers[BATCH_COMMIT] !== "1") {
      reasons.push(`${BATCH_COMMIT} ${JSON.stringify(headers[BATCH_COMMIT])} is not 1`);
    }
  }
  if (headers[TRACEPARENT] !== undefined && !TRACEPARENT_RE.test(headers[TRACEPARENT])) {
    reasons.push(`${TRACEPARENT} ${JSON.stringify(headers[TRACEPARENT])} is not a W3C traceparent`);
  }
  try {
    JSON.parse(decoder.decode(body));
  } catch (e) {
    reasons.push(`body is not JSON (${e.message})`);
  }
  return ["event", reasons];
}

function checkStreamConfig(domain, config) {
  const want = {
    subjects: [`${domain}.>`],
    retention: "limits",
    discard: "new",
    allow_direct: true,
    allow_atomic: true,
    deny_delete: true,
  };
  const reasons = [];
  for (const [key, value] of Object.entries(want)) {
    if (JSON.stringify(config[key]) !== JSON.stringify(value)) {
      reasons.push(`stream setting ${key} is ${JSON.stringify(config[key])}, not ${JSON.stringify(value)}`);
    }
  }
  return reasons;
}

async function read({ server, domain }) {
  const nc = await connect({ servers: server });
  const stream = streamName(domain);
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(stream);
  const mismatches = checkStreamConfig(domain, info.config).map((reason) => ({ sequence: 0, subject: null, reason }));
  const lastVersions = new Map();
  const types = {};
  let events = 0;
  let markers = 0;
  const last = info.state.last_seq;
  if (info.state.messages > 0) {
    const js = jetstream(nc);
    const consumer = await js.consumers.get(stream, { deliver_policy: DeliverPolicy.All });
    const messages = await consumer.consume();
    for await (const m of messages) {
      const headers = plain(m.headers);
      const [kind, reasons] = checkMessage(domain, m.subject, headers, m.data, lastVersions);
      if (kind === "marker") {
        markers += 1;
      } else {
        events += 1;
        types[headers[EVENT_TYPE]] = (types[headers[EVENT_TYPE]] ?? 0) + 1;
      }
      for (const reason of reasons) mismatches.push({ sequence: m.seq, subject: m.subject, reason });
      if (m.seq >= last) break;
    }
    await messages.close();
  }
  await nc.close();
  const summary = {
    client: CLIENT,
    stream,
    messages: events + markers,
    count: events,
    markers,
    aggregates: lastVersions.size,
    event_types: types,
    mismatches,
  };
  console.log(JSON.stringify(summary, null, 2));
  return mismatches.length > 0 ? 1 : 0;
}

class Refused extends Error {
  constructor(error) {
    super(`${error.code}/${error.err_code}: ${error.description}`);
    this.error = error;
    this.code = error.err_code;
  }
}

async function write({ server, domain, entity }) {
  const nc = await connect({ servers: server });
  const jsm = await jetstreamManager(nc);
  const stream = streamName(domain);
  const aggregateId = randomUUID();
  const scope = `${domain}.*.*.${aggregateId}`;
  const correlation = randomUUID();
  const out = { client: CLIENT, stream, aggregate: aggregateId, stored: [], checks: [] };
  const failures = [];
  const expect = (check, ok, detail) => {
    out.checks.push({ check, ok, detail: detail ?? null });
    if (!ok) failures.push(check);
  };

  // The aggregate's last event (direct get, last_by_subj): [sequence, version, msg id] or null.
  const lastEvent = async () => {
    const m = await jsm.direct.getMessage(stream, { last_by_subj: scope });
    if (!m) return null;
    return [m.seq, Number(m.header.get(AGGREGATE_VERSION)), m.header.get(MSG_ID)];
  };
  const message = (operation, eventType, fields, version, expectedSeq) => {
    const msgId = randomUUID();
    const h = {
      [MSG_ID]: msgId,
      [EVENT_TYPE]: eventType,
      [EVENT_VERSION]: "1",
      [AGGREGATE_TYPE]: entity,
      [AGGREGATE_ID]: aggregateId,
      [AGGREGATE_VERSION]: String(version),
      [CORRELATION_ID]: correlation,
      [CAUSATION_ID]: correlation,
      [ACTOR]: "conformance (js)",
      [TIMESTAMP]: new Date().toISOString(),
      [CONTENT_TYPE]: "application/json",
    };
    if (expectedSeq !== null) {
      h[EXPECTED_SEQ] = String(expectedSeq);
      h[EXPECTED_SUBJECT] = scope;
    }
    const body = encoder.encode(JSON.stringify({ [eventType]: { id: msgId, ...fields } }));
    return { subject: `${domain}.${entity}.${operation}.${aggregateId}`, headers: h, body };
  };
  const toHeaders = (h) => {
    const out = newHeaders();
    for (const [k, v] of Object.entries(h)) out.set(k, v);
    return out;
  };
  // Publishes as a request and returns the acknowledgement; throws Refused on an error.
  const publish = async ({ subject, headers: h, body }) => {
    const reply = await nc.request(subject, body, { headers: toHeaders(h), timeout: 5000 });
    const ack = reply.json();
    if (ack.error) throw new Refused(ack.error);
    return ack;
  };
  const stored = (m, seq) =>
    out.stored.push({
      sequence: seq,
      subject: m.subject,
      type: m.headers[EVENT_TYPE],
      version: Number(m.headers[AGGREGATE_VERSION]),
      msg_id: m.headers[MSG_ID],
    });
  const refusal = async (check, code, send) => {
    try {
      const ack = await send();
      expect(check, false, `stored: ${JSON.stringify(ack)}`);
    } catch (e) {
      if (!(e instanceof Refused)) throw e;
      expect(check, e.code === code, e.error);
    }
  };

  // 1. A new aggregate: nothing stored under its scope, so version 0 and sequence 0.
  let found = await lastEvent();
  expect("new aggregate has no last event", found === null, found);
  const first = message("opened", "Opened", { owner: "javascript" }, 1, 0);
  const ack1 = await publish(first);
  stored(first, ack1.seq);
  // 2. The second event expects the first's sequence.
  const second = message("deposited", "Deposited", { amount: 50 }, 2, ack1.seq);
  const ack2 = await publish(second);
  stored(second, ack2.seq);
  // 3. A stale expectation (the first's sequence again) is refused: 10071.
  const stale = message("deposited", "Deposited", { amount: 1 }, 2, ack1.seq);
  await refusal("stale expectation refused with 10071", WRONG_LAST_SEQUENCE, () => publish(stale));
  // 4. A retry of the stored second event, unchanged: the expectation is checked first (10071);
  //    the aggregate's last event carries our Nats-Msg-Id, so it is recognised as stored.
  await refusal("retry with its expectation refused with 10071", WRONG_LAST_SEQUENCE, () => publish(second));
  found = await lastEvent();
  expect(
    "retry recognised: the last event has our Nats-Msg-Id",
    found !== null && found[2] === second.headers[MSG_ID] && found[0] === ack2.seq,
    found,
  );
  // 5. The same retry without the expectation headers, within the dedupe window: duplicate.
  const bare = { ...second, headers: { ...second.headers } };
  delete bare.headers[EXPECTED_SEQ];
  delete bare.headers[EXPECTED_SUBJECT];
  const dup = await publish(bare);
  expect("retry without expectation acknowledged as duplicate", dup.duplicate === true && dup.seq === ack2.seq, dup);
  // 6. An atomic batch of two events, the expectation on the first, commit on the last.
  const batch = [
    message("deposited", "Deposited", { amount: 20 }, 3, ack2.seq),
    message("withdrawn", "Withdrawn", { amount: 15 }, 4, null),
  ];
  const sendBatch = async (batchId) => {
    for (const [i, m] of batch.entries()) {
      const h = { ...m.headers, [BATCH_ID]: batchId, [BATCH_SEQUENCE]: String(i + 1) };
      if (i + 1 === batch.length) {
        h[BATCH_COMMIT] = "1";
        return publish({ ...m, headers: h });
      }
      nc.publish(m.subject, m.body, { headers: toHeaders(h) });
    }
    return null;
  };
  const ack = await sendBatch(randomUUID().replaceAll("-", ""));
  expect("atomic batch acknowledged with its count", ack.count === 2, ack);
  stored(batch[0], ack.seq - 1);
  stored(batch[1], ack.seq);
  // 7. The batch retried (a new batch id, the same events): 10201, then recognised by ids.
  await refusal("retried batch refused with 10201", BATCH_DUPLICATE, () => sendBatch(randomUUID().replaceAll("-", "")));
  found = await lastEvent();
  expect(
    "batch retry recognised: the last event has our last Nats-Msg-Id",
    found !== null && found[2] === batch[1].headers[MSG_ID] && found[1] === 4,
    found,
  );
  await nc.close();
  out.failures = failures;
  console.log(JSON.stringify(out, null, 2));
  return failures.length > 0 ? 1 : 0;
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  const args = { command, entity: "account" };
  for (let i = 0; i < rest.length; i += 2) {
    const key = rest[i]?.replace(/^--/, "");
    if (!["server", "domain", "entity"].includes(key) || rest[i + 1] === undefined) {
      throw new Error(`unknown or incomplete argument ${rest[i]}`);
    }
    args[key] = rest[i + 1];
  }
  if (!["read", "write"].includes(command) || !args.server || !args.domain) {
    throw new Error("usage: node conformance.mjs read|write --server URL --domain DOMAIN [--entity KIND]");
  }
  return args;
}

let code;
try {
  const args = parseArgs(process.argv.slice(2));
  code = args.command === "read" ? await read(args) : await write(args);
} catch (e) {
  console.log(JSON.stringify({ client: CLIENT, error: String(e?.message ?? e) }));
  code = 2;
}
process.exit(code);
