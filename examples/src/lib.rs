//! Runnable programs live beside this file as `[[example]]`s; this library is empty.
