//! A stored header block read leniently, deciding as `async-nats` does whether the client can
//! receive it (see [`parse_header_block`]).

use async_nats::HeaderMap;

/// A header block as stored, parsed leniently: the headers that could be read (bytes that are
/// not UTF-8 replaced by U+FFFD, lines that are not headers left out), and why `async-nats`
/// would refuse the block, if it would.
///
/// `async-nats` (0.51) reads a delivered message's headers strictly and drops the whole
/// connection when they do not parse: bytes that are not UTF-8, a first line other than
/// `NATS/1.0[ status]`, a status that is not three digits, a non-empty line without `:`, or a
/// header name with a space, a control character or a non-ASCII byte. The server stores such
/// messages as any client sent them. This function decides the same way, so that a message read
/// through the JSON API (where headers come base64-encoded) is known to be one the client
/// cannot receive.
pub(crate) fn parse_header_block(block: &[u8]) -> (HeaderMap, Option<String>) {
    let mut headers = HeaderMap::new();
    if block.is_empty() {
        return (headers, None);
    }
    let mut defects: Vec<String> = Vec::new();
    let text = match std::str::from_utf8(block) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(e) => {
            defects.push(format!(
                "a header is not valid UTF-8 (byte {} of the header block)",
                e.valid_up_to()
            ));
            String::from_utf8_lossy(block)
        }
    };
    let mut lines = text.lines().peekable();
    match lines.next() {
        Some(first) => match first.strip_prefix("NATS/1.0") {
            Some(rest) => {
                let status = rest.trim().split(' ').next().unwrap_or_default();
                if !status.is_empty() {
                    if async_nats::StatusCode::from_bytes(status.as_bytes()).is_err() {
                        defects.push(format!("the status {status:?} is not a status code"));
                    } else {
                        defects.push(format!("it carries the status line {:?}", first.trim()));
                    }
                }
            }
            None => defects.push(format!(
                "the header block starts with {:?}, not NATS/1.0",
                first.chars().take(40).collect::<String>()
            )),
        },
        None => defects.push("the header block has no version line".to_owned()),
    }
    while let Some(line) = lines.next() {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            defects.push(format!(
                "the header line {:?} has no ':'",
                line.chars().take(40).collect::<String>()
            ));
            continue;
        };
        let mut value = value.trim_start().to_owned();
        while let Some(more) = lines.next_if(|l| l.starts_with(char::is_whitespace)) {
            value.push_str(more);
        }
        let value = value.trim_end();
        match name.parse::<async_nats::header::HeaderName>() {
            Ok(name) => headers.append(name, value),
            Err(_) => defects.push(format!(
                "the header name {:?} has a space, a control character or a non-ASCII byte",
                name.chars().take(40).collect::<String>()
            )),
        }
    }
    let defect = (!defects.is_empty()).then(|| defects.join("; "));
    (headers, defect)
}

#[cfg(test)]
mod tests {
    use super::parse_header_block;

    #[test]
    fn a_good_block_reads_without_defect() {
        let (h, defect) =
            parse_header_block(b"NATS/1.0\r\nCim-Actor: ada\r\nX-Long: a\r\n  b\r\n\r\n");
        assert_eq!(defect, None);
        assert_eq!(h.get("Cim-Actor").unwrap().as_str(), "ada");
        assert_eq!(h.get("X-Long").unwrap().as_str(), "a  b");
        assert_eq!(parse_header_block(b"").1, None);
    }

    #[test]
    fn what_the_client_refuses_is_a_defect_and_the_rest_is_kept() {
        let (h, defect) =
            parse_header_block(b"NATS/1.0\r\nCim-Actor: \xff\xfe\r\nCim-Event-Type: X\r\n\r\n");
        assert!(defect.unwrap().contains("not valid UTF-8"));
        assert_eq!(h.get("Cim-Actor").unwrap().as_str(), "\u{fffd}\u{fffd}");
        assert_eq!(h.get("Cim-Event-Type").unwrap().as_str(), "X");

        let (h, defect) = parse_header_block(b"NATS/1.0\r\nCim Actor: bob\r\nA: 1\r\n\r\n");
        assert!(defect.unwrap().contains("\"Cim Actor\""));
        assert_eq!(h.get("A").unwrap().as_str(), "1");

        for (block, needle) in [
            (&b"NATS/1.0\r\nnocolon\r\n\r\n"[..], "has no ':'"),
            (b"HTTP/1.1\r\nX: y\r\n\r\n", "not NATS/1.0"),
            (b"NATS/1.0 abc\r\n\r\n", "not a status code"),
            (b"NATS/1.0 503\r\n\r\n", "status line"),
        ] {
            let defect = parse_header_block(block).1.unwrap();
            assert!(defect.contains(needle), "{defect}");
        }
    }
}
