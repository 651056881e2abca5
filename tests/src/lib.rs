//! Cross-crate tests of cim-nats live in `tests/`; this library is empty.
