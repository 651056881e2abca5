"""Reads and writes cim-nats events with nats-py, checking them against docs/wire-format.md.

    python conformance.py read  --server nats://127.0.0.1:4222 --domain bank
    python conformance.py write --server nats://127.0.0.1:4222 --domain bank

`read` reads every message of the stream `{DOMAIN}_EVENTS` (one direct get per sequence) and
checks each against the specification; it prints a JSON summary and exits 1 on any mismatch.
`write` appends events to a new aggregate of the domain as the specification says (a first
event expecting sequence 0, a second expecting the first's sequence, a refused stale
expectation, a retry recognised as stored, an atomic batch of two events and its refused
retry); it prints what it stored as JSON and exits 1 when the server answers otherwise than
the specification says.
"""

import argparse
import asyncio
import datetime
import json
import re
import sys
import uuid

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError

CLIENT = "nats-py 2.16.0"

# Header names (docs/wire-format.md, "Headers").
MSG_ID = "Nats-Msg-Id"
EVENT_TYPE = "Cim-Event-Type"
EVENT_VERSION = "Cim-Event-Version"
AGGREGATE_TYPE = "Cim-Aggregate-Type"
AGGREGATE_ID = "Cim-Aggregate-Id"
AGGREGATE_VERSION = "Cim-Aggregate-Version"
CORRELATION_ID = "Cim-Correlation-Id"
CAUSATION_ID = "Cim-Causation-Id"
ACTOR = "Cim-Actor"
TIMESTAMP = "Cim-Timestamp"
CONTENT_TYPE = "Content-Type"
EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQUENCE = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"
CHECK_AGGREGATE = "Cim-Check-Aggregate-Id"
TRACEPARENT = "traceparent"

# Error codes (docs/wire-format.md, "Errors").
WRONG_LAST_SEQUENCE = 10071
BATCH_DUPLICATE = 10201

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)$")
TRACEPARENT_RE = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
MAX_TOKEN = 256


def stream_name(domain):
    return domain.upper().replace("-", "_") + "_EVENTS"


def token_problem(token):
    """Why `token` cannot be a subject token of the wire format, or None."""
    if not token:
        return "empty token"
    if len(token.encode()) > MAX_TOKEN:
        return f"token longer than {MAX_TOKEN} bytes"
    for c in token:
        if c in ".*>" or c.isspace() or ord(c) < 32 or ord(c) == 127:
            return f"token {token!r} contains {c!r}"
    return None


def is_timestamp(value):
    if not RFC3339_RE.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00").replace("t", "T"))
    except ValueError:
        return False
    return True


def check_message(domain, subject, headers, body, last_versions):
    """The mismatches of one stored message (a list of reasons) and its kind."""
    reasons = []
    headers = headers or {}
    tokens = subject.split(".")
    if subject == f"{domain}._cim.check":
        # A check marker of a multi-aggregate append: not an event.
        agg = headers.get(CHECK_AGGREGATE)
        if agg is None or token_problem(agg):
            reasons.append(f"check marker without a valid {CHECK_AGGREGATE}")
        if not DECIMAL_RE.match(headers.get(EXPECTED_SEQ, "")):
            reasons.append(f"check marker without a decimal {EXPECTED_SEQ}")
        if headers.get(EXPECTED_SUBJECT) != f"{domain}.*.*.{agg}":
            reasons.append(f"check marker's {EXPECTED_SUBJECT} is not {domain}.*.*.{agg}")
        if body:
            reasons.append("check marker with a body")
        return "marker", reasons
    if len(tokens) != 4 or tokens[0] != domain:
        return "event", [f"subject {subject!r} is not {domain}.{{aggregate}}.{{operation}}.{{aggregate_id}}"]
    for t in tokens:
        problem = token_problem(t)
        if problem:
            reasons.append(f"subject: {problem}")
    if tokens[1].startswith("_"):
        reasons.append(f"entity kind {tokens[1]!r} is reserved (starts with _)")
    _, entity, _, aggregate_id = tokens

    def required(name):
        value = headers.get(name)
        if value is None:
            reasons.append(f"header {name} is missing")
        return value

    msg_id = required(MSG_ID)
    if msg_id is not None and not UUID_RE.match(msg_id):
        reasons.append(f"{MSG_ID} {msg_id!r} is not a UUID")
    event_type = required(EVENT_TYPE)
    if event_type is not None and not event_type:
        reasons.append(f"{EVENT_TYPE} is empty")
    event_version = required(EVENT_VERSION)
    if event_version is not None and (not DECIMAL_RE.match(event_version) or int(event_version) > 2**32 - 1):
        reasons.append(f"{EVENT_VERSION} {event_version!r} is not a u32")
    kind = required(AGGREGATE_TYPE)
    if kind is not None and kind != entity:
        reasons.append(f"{AGGREGATE_TYPE} {kind!r} is not the subject's entity kind {entity!r}")
    agg = required(AGGREGATE_ID)
    if agg is not None and agg != aggregate_id:
        reasons.append(f"{AGGREGATE_ID} {agg!r} is not the subject's aggregate id {aggregate_id!r}")
    version = required(AGGREGATE_VERSION)
    if version is not None:
        if not DECIMAL_RE.match(version) or int(version) > 2**64 - 1:
            reasons.append(f"{AGGREGATE_VERSION} {version!r} is not a u64")
        else:
            v = int(version)
            previous = last_versions.get(aggregate_id, 0)
            if v != previous + 1:
                reasons.append(
                    f"{AGGREGATE_VERSION} {v} of aggregate {aggregate_id} follows version {previous}"
                    f" (expected {previous + 1})"
                )
            last_versions[aggregate_id] = max(v, previous)
    timestamp = required(TIMESTAMP)
    if timestamp is not None and not is_timestamp(timestamp):
        reasons.append(f"{TIMESTAMP} {timestamp!r} is not RFC 3339")
    content_type = required(CONTENT_TYPE)
    if content_type is not None and content_type != "application/json":
        reasons.append(f"{CONTENT_TYPE} {content_type!r} is not application/json")
    for name in (CORRELATION_ID, CAUSATION_ID):
        value = headers.get(name)
        if value is not None and not UUID_RE.match(value):
            reasons.append(f"{name} {value!r} is not a UUID")
    if EXPECTED_SEQ in headers:
        if not DECIMAL_RE.match(headers[EXPECTED_SEQ]):
            reasons.append(f"{EXPECTED_SEQ} {headers[EXPECTED_SEQ]!r} is not a sequence")
        scope = headers.get(EXPECTED_SUBJECT)
        if scope is not None and not scope.startswith(f"{domain}.*.*."):
            reasons.append(f"{EXPECTED_SUBJECT} {scope!r} is not {domain}.*.*.{{aggregate_id}}")
    if BATCH_ID in headers:
        if not DECIMAL_RE.match(headers.get(BATCH_SEQUENCE, "")) or headers[BATCH_SEQUENCE] == "0":
            reasons.append(f"{BATCH_SEQUENCE} {headers.get(BATCH_SEQUENCE)!r} is not a position from 1")
        if BATCH_COMMIT in headers and headers[BATCH_COMMIT] != "1":
            reasons.append(f"{BATCH_COMMIT} {headers[BATCH_COMMIT]!r} is not 1")
    if TRACEPARENT in headers and not TRACEPARENT_RE.match(headers[TRACEPARENT]):
        reasons.append(f"{TRACEPARENT} {headers[TRACEPARENT]!r} is not a W3C traceparent")
    try:
        json.loads((body or b"").decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        reasons.append(f"body is not JSON ({e})")
    return "event", reasons


async def stream_info(nc, stream):
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", b"", timeout=5)
    info = json.loads(reply.data)
    if "error" in info:
        raise RuntimeError(f"stream {stream}: {info['error']}")
    return info


def check_stream_config(domain, config):
    reasons = []
    want = {
        "subjects": [f"{domain}.>"],
        "retention": "limits",
        "discard": "new",
        "allow_direct": True,
        "allow_atomic": True,
        "deny_delete": True,
    }
    for key, value in want.items():
        if config.get(key) != value:
            reasons.append(f"stream setting {key} is {config.get(key)!r}, not {value!r}")
    return reasons


async def read(args):
    nc = await nats.connect(args.server)
    js = nc.jetstream()
    stream = stream_name(args.domain)
    info = await stream_info(nc, stream)
    mismatches = [
        {"sequence": 0, "subject": None, "reason": r}
        for r in check_stream_config(args.domain, info["config"])
    ]
    state = info["state"]
    last_versions = {}
    events = markers = 0
    types = {}
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        try:
            msg = await js.get_msg(stream, seq=seq, direct=True)
        except NotFoundError:
            continue  # deleted: the stream denies deletes, so none expected
        kind, reasons = check_message(args.domain, msg.subject, msg.headers, msg.data, last_versions)
        if kind == "marker":
            markers += 1
        else:
            events += 1
            event_type = (msg.headers or {}).get(EVENT_TYPE)
            types[event_type] = types.get(event_type, 0) + 1
        mismatches.extend({"sequence": seq, "subject": msg.subject, "reason": r} for r in reasons)
    await nc.close()
    summary = {
        "client": CLIENT,
        "stream": stream,
        "messages": events + markers,
        "count": events,
        "markers": markers,
        "aggregates": len(last_versions),
        "event_types": types,
        "mismatches": mismatches,
    }
    print(json.dumps(summary, indent=2))
    return 1 if mismatches else 0


class Refused(Exception):
    def __init__(self, error):
        super().__init__(f"{error.get('code')}/{error.get('err_code')}: {error.get('description')}")
        self.error = error

    @property
    def code(self):
        return self.error.get("err_code")


def event_headers(domain, entity, aggregate_id, event_type, version, msg_id, correlation):
    return {
        MSG_ID: msg_id,
        EVENT_TYPE: event_type,
        EVENT_VERSION: "1",
        AGGREGATE_TYPE: entity,
        AGGREGATE_ID: aggregate_id,
        AGGREGATE_VERSION: str(version),
        CORRELATION_ID: correlation,
        CAUSATION_ID: correlation,
        ACTOR: "conformance (python)",
        TIMESTAMP: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        CONTENT_TYPE: "application/json",
    }


async def publish(nc, subject, headers, body):
    """Publishes as a request and returns the acknowledgement; raises Refused on an error."""
    reply = await nc.request(subject, body, headers=headers, timeout=5)
    ack = json.loads(reply.data)
    if "error" in ack:
        raise Refused(ack["error"])
    return ack


async def last_event(nc, stream, scope):
    """The aggregate's last event (direct get, last_by_subj): (sequence, version, msg id) or None."""
    reply = await nc.request(
        f"$JS.API.DIRECT.GET.{stream}", json.dumps({"last_by_subj": scope}).encode(), timeout=5
    )
    headers = reply.headers or {}
    if headers.get("Status") == "404":
        return None
    if headers.get("Status"):
        raise RuntimeError(f"direct get {scope}: {headers}")
    return int(headers["Nats-Sequence"]), int(headers[AGGREGATE_VERSION]), headers.get(MSG_ID)


async def write(args):
    nc = await nats.connect(args.server)
    domain, stream = args.domain, stream_name(args.domain)
    entity = args.entity
    aggregate_id = str(uuid.uuid4())
    scope = f"{domain}.*.*.{aggregate_id}"
    correlation = str(uuid.uuid4())
    out = {"client": CLIENT, "stream": stream, "aggregate": aggregate_id, "stored": [], "checks": []}
    failures = []

    def expect(name, ok, detail):
        out["checks"].append({"check": name, "ok": ok, "detail": detail})
        if not ok:
            failures.append(name)

    def message(operation, event_type, fields, version, expected_seq, msg_id=None):
        msg_id = msg_id or str(uuid.uuid4())
        headers = event_headers(domain, entity, aggregate_id, event_type, version, msg_id, correlation)
        if expected_seq is not None:
            headers[EXPECTED_SEQ] = str(expected_seq)
            headers[EXPECTED_SUBJECT] = scope
        body = json.dumps({event_type: dict(fields, id=msg_id)}).encode()
        return f"{domain}.{entity}.{operation}.{aggregate_id}", headers, body

    def stored(subject, headers, ack):
        out["stored"].append(
            {
                "sequence": ack["seq"],
                "subject": subject,
                "type": headers[EVENT_TYPE],
                "version": int(headers[AGGREGATE_VERSION]),
                "msg_id": headers[MSG_ID],
            }
        )

    # 1. A new aggregate: nothing stored under its scope, so version 0 and sequence 0.
    found = await last_event(nc, stream, scope)
    expect("new aggregate has no last event", found is None, found)
    first = message("opened", "Opened", {"owner": "python"}, 1, 0)
    ack1 = await publish(nc, *first)
    stored(first[0], first[1], ack1)
    # 2. The second event expects the first's sequence.
    second = message("deposited", "Deposited", {"amount": 70}, 2, ack1["seq"])
    ack2 = await publish(nc, *second)
    stored(second[0], second[1], ack2)
    # 3. A stale expectation (the first's sequence again) is refused: 10071.
    stale = message("deposited", "Deposited", {"amount": 1}, 2, ack1["seq"])
    try:
        ack = await publish(nc, *stale)
        expect("stale expectation refused with 10071", False, f"stored: {ack}")
    except Refused as e:
        expect("stale expectation refused with 10071", e.code == WRONG_LAST_SEQUENCE, e.error)
    # 4. A retry of the stored second event, unchanged: the expectation is checked first (10071);
    #    the aggregate's last event carries our Nats-Msg-Id, so it is recognised as stored.
    try:
        ack = await publish(nc, *second)
        expect("retry with its expectation refused with 10071", False, f"stored: {ack}")
    except Refused as e:
        expect("retry with its expectation refused with 10071", e.code == WRONG_LAST_SEQUENCE, e.error)
    found = await last_event(nc, stream, scope)
    expect(
        "retry recognised: the last event has our Nats-Msg-Id",
        found is not None and found[2] == second[1][MSG_ID] and found[0] == ack2["seq"],
        found,
    )
    # 5. The same retry without the expectation headers, within the dedupe window: duplicate.
    bare = {k: v for k, v in second[1].items() if k not in (EXPECTED_SEQ, EXPECTED_SUBJECT)}
    ack = await publish(nc, second[0], bare, second[2])
    expect(
        "retry without expectation acknowledged as duplicate",
        ack.get("duplicate") is True and ack.get("seq") == ack2["seq"],
        ack,
    )
    # 6. An atomic batch of two events, the expectation on the first, commit on the last.
    batch_id = uuid.uuid4().hex
    batch = [
        message("deposited", "Deposited", {"amount": 30}, 3, ack2["seq"]),
        message("withdrawn", "Withdrawn", {"amount": 25}, 4, None),
    ]

    async def send_batch(batch_id):
        for i, (subject, headers, body) in enumerate(batch, start=1):
            headers = dict(headers, **{BATCH_ID: batch_id, BATCH_SEQUENCE: str(i)})
            if i == len(batch):
                headers[BATCH_COMMIT] = "1"
                return await publish(nc, subject, headers, body)
            await nc.publish(subject, body, headers=headers)

    ack = await send_batch(batch_id)
    expect("atomic batch acknowledged with its count", ack.get("count") == 2, ack)
    for (subject, headers, _), seq in zip(batch, (ack["seq"] - 1, ack["seq"])):
        stored(subject, headers, {"seq": seq})
    # 7. The batch retried (a new batch id, the same events): 10201, then recognised by ids.
    try:
        again = await send_batch(uuid.uuid4().hex)
        expect("retried batch refused with 10201", False, f"stored: {again}")
    except Refused as e:
        expect("retried batch refused with 10201", e.code == BATCH_DUPLICATE, e.error)
    found = await last_event(nc, stream, scope)
    expect(
        "batch retry recognised: the last event has our last Nats-Msg-Id",
        found is not None and found[2] == batch[-1][1][MSG_ID] and found[1] == 4,
        found,
    )
    await nc.close()
    out["failures"] = failures
    print(json.dumps(out, indent=2))
    return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["read", "write"])
    parser.add_argument("--server", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--entity", default="account", help="entity kind of the written events")
    args = parser.parse_args()
    try:
        code = asyncio.run(read(args) if args.command == "read" else write(args))
    except (RuntimeError, Refused, NatsTimeout, OSError) as e:
        print(json.dumps({"client": CLIENT, "error": str(e)}))
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
