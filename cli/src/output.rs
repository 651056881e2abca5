//! Tables and JSON lines, and one stored event as either.

use async_nats::HeaderMap;
use comfy_table::{presets, Table};
use serde_json::{json, Value};

/// A table with `header`, in the tool's style (no borders, as the `nats` CLI's lists).
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.iter().copied());
    table
}

/// A JSON value as a table cell: strings without quotes, `null` as `-`.
pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The read models (as `status` reads them) as a table.
pub(crate) fn read_model_table(models: &[Value]) -> Table {
    let mut rows = table(&[
        "read model",
        "version",
        "bucket",
        "stream",
        "checkpoint",
        "lag",
    ]);
    for m in models {
        rows.add_row(
            ["name", "version", "bucket", "stream", "checkpoint", "lag"]
                .iter()
                .map(|field| text(&m[*field]))
                .collect::<Vec<_>>(),
        );
    }
    rows
}

/// A header's value, or "".
pub(crate) fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> &'a str {
    headers.and_then(|h| h.get(name)).map_or("", |v| v.as_str())
}

/// A stored event read from its message: what the framework's headers say and the body as JSON
/// (as text when it is not JSON).
pub(crate) fn event_json(
    sequence: u64,
    time: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Value {
    let h = |name| header(headers, name);
    let body = serde_json::from_slice::<Value>(payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()));
    json!({
        "sequence": sequence,
        "time": time,
        "subject": subject,
        "event_type": h("Cim-Event-Type"),
        "schema_version": h("Cim-Event-Version"),
        "aggregate_type": h("Cim-Aggregate-Type"),
        "aggregate_id": h("Cim-Aggregate-Id"),
        "version": h("Cim-Aggregate-Version").parse::<u64>().ok(),
        "event_id": h("Nats-Msg-Id"),
        "correlation_id": h("Cim-Correlation-Id"),
        "causation_id": h("Cim-Causation-Id"),
        "actor": h("Cim-Actor"),
        "timestamp": h("Cim-Timestamp"),
        "body": body,
    })
}

/// The row of an event in a table.
pub(crate) fn event_row(event: &Value) -> Vec<String> {
    let text = |key: &str| match &event[key] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    vec![
        text("sequence"),
        text("time"),
        text("event_type"),
        text("aggregate_id"),
        text("version"),
        text("actor"),
    ]
}

/// The header of the events table.
pub(crate) const EVENT_HEADER: [&str; 6] = ["seq", "time", "type", "aggregate", "version", "actor"];

/// Asks before a change (`question`, e.g. "redrive dead letter 7"): `--yes` skips the question;
/// without it, a terminal is asked (`y` goes on) and anything else is refused, so that a script
/// cannot change anything by accident.
pub(crate) fn confirm(question: &str, yes: bool) -> Result<(), crate::Error> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(format!("not on a terminal: pass --yes to {question}").into());
    }
    eprint!("{question}? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err("cancelled".into())
    }
}
