//! JetStream key-value buckets: how they are opened, and the keys aggregates and projections
//! are stored under.

use async_nats::jetstream::{self, kv};

use crate::jetstream::setup::{SetupError, SetupErrorKind};

/// A KV key for `(kind, id)`: `{kind}.r.{id}` when both are made of KV key characters, else
/// `{kind-hex}.h.{id-hex}`, so that any aggregate id maps to one valid key and no two ids share
/// one.
pub(crate) fn kv_key(kind: &str, id: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
    };
    if plain(kind) && plain(id) {
        format!("{kind}.r.{id}")
    } else {
        format!("{}.h.{}", hex(kind), hex(id))
    }
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
    if let Ok(store) = context.get_key_value(bucket).await {
        return Ok(store);
    }
    let created = context
        .create_key_value(kv::Config {
            bucket: bucket.to_owned(),
            description: description.to_owned(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
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
}
