//! Storing a message exactly as given, header bytes included, as a client in another language
//! (or a broken one) might: for tests of what readers do with messages no well-behaved client
//! writes. `async-nats` cannot send such headers, so this speaks the NATS protocol over a plain
//! TCP connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Publishes `payload` with the header block `headers` (sent byte for byte, e.g.
/// `b"NATS/1.0\r\nCim-Actor: \xff\xfe\r\n\r\n"`; empty for none) on `subject` to the server at
/// `url` (`nats://host:port`, no authentication), and returns the stream sequence JetStream
/// acknowledged.
///
/// # Errors
///
/// An I/O error, or one saying what the server answered instead of an acknowledgement (for
/// example a JetStream error as JSON).
///
/// ```no_run
/// # fn run() -> std::io::Result<()> {
/// let url = "nats://127.0.0.1:4222";
/// let seq = cim_nats::testing::publish_raw(
///     url,
///     "bank.account.opened.a1",
///     b"NATS/1.0\r\nCim-Actor: \xff\xfe\r\n\r\n",
///     b"{}",
/// )?;
/// # let _ = seq; Ok(()) }
/// ```
pub fn publish_raw(
    url: &str,
    subject: &str,
    headers: &[u8],
    payload: &[u8],
) -> std::io::Result<u64> {
    let address = url
        .trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_owned();
    let stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO
    let inbox = format!("_INBOX.raw{}", uuid::Uuid::new_v4().simple());
    let mut out = Vec::with_capacity(headers.len() + payload.len() + 256);
    out.extend_from_slice(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
    );
    out.extend_from_slice(format!("SUB {inbox} 1\r\n").as_bytes());
    if headers.is_empty() {
        out.extend_from_slice(format!("PUB {subject} {inbox} {}\r\n", payload.len()).as_bytes());
    } else {
        out.extend_from_slice(
            format!(
                "HPUB {subject} {inbox} {} {}\r\n",
                headers.len(),
                headers.len() + payload.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(headers);
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    writer.write_all(&out)?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n")?;
        } else if line.starts_with("-ERR") {
            return Err(std::io::Error::other(line.trim().to_owned()));
        } else if let Some(args) = line.strip_prefix("MSG ").or(line.strip_prefix("HMSG ")) {
            let args: Vec<&str> = args.split_whitespace().collect();
            let total: usize = args
                .last()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad reply line {line:?}")))?;
            let header_len: usize = if line.starts_with("HMSG") {
                args.get(args.len().saturating_sub(2))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            } else {
                0
            };
            let mut body = vec![0; total + 2];
            reader.read_exact(&mut body)?;
            let ack = &body[header_len..total];
            let parsed: serde_json::Value = serde_json::from_slice(ack).map_err(|e| {
                std::io::Error::other(format!("{e}: {}", String::from_utf8_lossy(ack)))
            })?;
            return parsed["seq"]
                .as_u64()
                .filter(|_| parsed.get("error").is_none())
                .ok_or_else(|| std::io::Error::other(String::from_utf8_lossy(ack).into_owned()));
        }
    }
}
