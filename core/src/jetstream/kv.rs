//! JetStream key-value buckets: how they are opened, and the keys aggregates and projections
//! are stored under.

use async_nats::jetstream::{self, kv};

use crate::jetstream::setup::{SetupError, SetupErrorKind};

/// Is `s` made of KV key characters only (and no dot)?
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

/// A KV key for `(kind, id)`: `{kind}.r.{id}` when both are made of KV key characters, else
/// `{kind-hex}.h.{id-hex}`, so that any aggregate id maps to one valid key and no two ids share
/// one.
pub(crate) fn kv_key(kind: &str, id: &str) -> String {
    if plain(kind) && plain(id) {
        format!("{kind}.r.{id}")
    } else {
        format!("{}.h.{}", hex(kind), hex(id))
    }
}

/// The KV key of row `id` of table `table` in a read model: `{table}.r.{id}` when `id` is made of
/// KV key characters, else `{table}.h.x{id in hex}` (the same scheme as [`kv_key`], with the
/// table always plain so that a table's rows share the prefix `{table}.`). `None` when `table` is
/// not plain or starts with `_` (reserved).
pub(crate) fn row_key(table: &str, id: &str) -> Option<String> {
    if !plain(table) || table.starts_with('_') {
        return None;
    }
    Some(if plain(id) {
        format!("{table}.r.{id}")
    } else {
        format!("{table}.h.{}", hex(id))
    })
}

/// The row id of a key [`row_key`] made for `table`.
pub(crate) fn row_id(table: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(table)?.strip_prefix('.')?;
    if let Some(id) = rest.strip_prefix("r.") {
        return Some(id.to_owned());
    }
    let hexed = rest.strip_prefix("h.x")?;
    let bytes = (0..hexed.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hexed.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn hex(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() * 2 + 1);
    out.push('x');
    for b in s.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Opens (creating it if needed) a KV bucket with history 1 on file storage.
pub(crate) async fn open_bucket(
    context: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, SetupError> {
    open_bucket_on(
        context,
        bucket,
        description,
        replicas,
        jetstream::stream::StorageType::File,
    )
    .await
}

/// [`open_bucket`] on the given storage.
pub(crate) async fn open_bucket_on(
    context: &jetstream::Context,
    bucket: &str,
    description: &str,
    replicas: usize,
    storage: jetstream::stream::StorageType,
) -> Result<kv::Store, SetupError> {
    if let Ok(store) = context.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = context
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage,
            num_replicas: replicas,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process may have created it meanwhile.
        Err(e) => context.get_key_value(bucket).await.map_err(|_| {
            SetupError::with_source(
                SetupErrorKind::Bucket {
                    bucket: bucket.to_owned(),
                },
                e,
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_distinct() {
        assert_eq!(kv_key("account", "a-1"), "account.r.a-1");
        let odd = kv_key("account", "a:b/c");
        assert!(odd.starts_with("x6163636f756e74.h.x"), "{odd}");
        assert_ne!(kv_key("account", "x61"), kv_key("account", "a"));
        assert_ne!(kv_key("a", "b:c"), kv_key("a", "b;c"));
    }

    #[test]
    fn row_keys_share_their_table_prefix_and_decode_back() {
        assert_eq!(row_key("compute", "r-1").as_deref(), Some("compute.r.r-1"));
        for id in ["r-1", "a.b", "host:1/2", "é", "x61"] {
            let key = row_key("compute", id).unwrap();
            assert!(key.starts_with("compute."), "{key}");
            assert_eq!(row_id("compute", &key).as_deref(), Some(id));
        }
        assert_ne!(row_key("t", "x61"), row_key("t", "a"));
        assert_eq!(row_key("a.b", "1"), None);
        assert_eq!(row_key("_cim", "1"), None);
        assert_eq!(row_id("compute", "network.r.1"), None);
    }
}
