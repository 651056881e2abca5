//! Parsing of `#[nats_event(...)]` attributes into typed values; only the syntax and the keys
//! are checked here, their meaning in [`crate::valid`].

use proc_macro2::Span;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, LitInt, LitStr, Path, Token};

use crate::errors::Errors;
use crate::symbol::{
    AGGREGATE, AGGREGATE_ID, DOMAIN, ENUM_KEYS, EVENT_ID, EVENT_TYPE, FIELDS, FIELD_KEYS, FROM,
    IDENTITY, NATS_EVENT, OPERATION, UPCAST, UPCAST_KEYS, VARIANT_KEYS, VERSION, WITH,
};

/// An integer literal with the value it holds.
#[derive(Clone, Copy)]
pub(crate) struct Int {
    pub(crate) value: u32,
    pub(crate) span: Span,
}

/// `#[nats_event(...)]` on the enum.
#[derive(Default)]
pub(crate) struct EnumAttrs {
    /// An attribute failed to parse, so keys after the error are unknown: checks for missing
    /// keys are skipped to avoid follow-on errors.
    pub(crate) incomplete: bool,
    pub(crate) domain: Option<LitStr>,
    pub(crate) aggregate: Option<LitStr>,
    pub(crate) event_id: Option<LitStr>,
    pub(crate) aggregate_id: Option<LitStr>,
    pub(crate) identity: Option<LitStr>,
}

/// `#[nats_event(...)]` on a variant.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    /// As [`EnumAttrs::incomplete`].
    pub(crate) incomplete: bool,
    pub(crate) aggregate: Option<LitStr>,
    pub(crate) operation: Option<LitStr>,
    pub(crate) version: Option<Int>,
    pub(crate) event_type: Option<LitStr>,
    pub(crate) upcasts: Vec<Upcast>,
}

/// One `upcast(from = N, with = path)` or `upcast(from = N, fields = path)`.
pub(crate) struct Upcast {
    pub(crate) from: Int,
    pub(crate) with: Path,
    /// `fields = path`: the function gets and returns the variant's content only.
    pub(crate) fields: bool,
}

/// `#[nats_event(...)]` on a field: the span of each marker present.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub(crate) event_id: Option<Span>,
    pub(crate) aggregate_id: Option<Span>,
    pub(crate) identity: Option<Span>,
}

pub(crate) fn enum_attrs(attrs: &[Attribute], errors: &mut Errors) -> EnumAttrs {
    let mut out = EnumAttrs::default();
    out.incomplete = !for_each_meta(attrs, errors, |meta| {
        if meta.path.is_ident(DOMAIN) {
            set_str(&mut out.domain, &meta, DOMAIN)
        } else if meta.path.is_ident(AGGREGATE) {
            set_str(&mut out.aggregate, &meta, AGGREGATE)
        } else if meta.path.is_ident(EVENT_ID) {
            set_str(&mut out.event_id, &meta, EVENT_ID)
        } else if meta.path.is_ident(AGGREGATE_ID) {
            set_str(&mut out.aggregate_id, &meta, AGGREGATE_ID)
        } else if meta.path.is_ident(IDENTITY) {
            set_str(&mut out.identity, &meta, IDENTITY)
        } else {
            Err(unknown_key(&meta, "the enum", ENUM_KEYS))
        }
    });
    out
}

pub(crate) fn variant_attrs(attrs: &[Attribute], errors: &mut Errors) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    out.incomplete = !for_each_meta(attrs, errors, |meta| {
        if meta.path.is_ident(AGGREGATE) {
            set_str(&mut out.aggregate, &meta, AGGREGATE)
        } else if meta.path.is_ident(OPERATION) {
            set_str(&mut out.operation, &meta, OPERATION)
        } else if meta.path.is_ident(EVENT_TYPE) {
            set_str(&mut out.event_type, &meta, EVENT_TYPE)
        } else if meta.path.is_ident(VERSION) {
            let version = int(&meta)?;
            set(&mut out.version, version, &meta, VERSION)
        } else if meta.path.is_ident(UPCAST) {
            out.upcasts.push(upcast(&meta)?);
            Ok(())
        } else {
            Err(unknown_key(&meta, "a variant", VARIANT_KEYS))
        }
    });
    out
}

pub(crate) fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for_each_meta(attrs, errors, |meta| {
        let (slot, key) = if meta.path.is_ident(EVENT_ID) {
            (&mut out.event_id, EVENT_ID)
        } else if meta.path.is_ident(AGGREGATE_ID) {
            (&mut out.aggregate_id, AGGREGATE_ID)
        } else if meta.path.is_ident(IDENTITY) {
            (&mut out.identity, IDENTITY)
        } else {
            return Err(unknown_key(&meta, "a field", FIELD_KEYS));
        };
        if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
            return Err(meta.error(format_args!(
                "`{key}` on a field takes no value: write `#[{NATS_EVENT}({key})]`"
            )));
        }
        set(slot, meta.path.span(), &meta, key)
    });
    out
}

/// `upcast(from = N, with = path)` or `upcast(from = N, fields = path)`.
fn upcast(meta: &ParseNestedMeta<'_>) -> syn::Result<Upcast> {
    let mut from = None;
    let mut with = None;
    let mut fields = None;
    meta.parse_nested_meta(|inner| {
        if inner.path.is_ident(FROM) {
            let value = int(&inner)?;
            set(&mut from, value, &inner, FROM)
        } else if inner.path.is_ident(WITH) {
            let value: Path = inner.value()?.parse()?;
            set(&mut with, value, &inner, WITH)
        } else if inner.path.is_ident(FIELDS) {
            let value: Path = inner.value()?.parse()?;
            set(&mut fields, value, &inner, FIELDS)
        } else {
            Err(unknown_key(&inner, "`upcast(...)`", UPCAST_KEYS))
        }
    })?;
    let Some(from) = from else {
        return Err(meta.error(format_args!(
            "`{UPCAST}` needs `{FROM} = N`: `{UPCAST}({FROM} = 1, {WITH} = path::to::fn)`"
        )));
    };
    match (with, fields) {
        (Some(with), None) => Ok(Upcast {
            from,
            with,
            fields: false,
        }),
        (None, Some(with)) => Ok(Upcast {
            from,
            with,
            fields: true,
        }),
        (Some(_), Some(_)) => Err(meta.error(format_args!(
            "`{UPCAST}` takes `{WITH} = path` (the whole stored JSON) or `{FIELDS} = path` (the \
             variant's content), not both"
        ))),
        (None, None) => Err(meta.error(format_args!(
            "`{UPCAST}` needs `{WITH} = path` (given the whole stored JSON) or `{FIELDS} = path` \
             (given the variant's content): `{UPCAST}({FROM} = 1, {FIELDS} = path::to::fn)`"
        ))),
    }
}

/// Runs `f` on every key of every `#[nats_event(...)]` attribute; an error is recorded and ends
/// the parsing of that attribute only. Returns whether every attribute parsed.
fn for_each_meta(
    attrs: &[Attribute],
    errors: &mut Errors,
    mut f: impl FnMut(ParseNestedMeta<'_>) -> syn::Result<()>,
) -> bool {
    let mut complete = true;
    for attr in attrs.iter().filter(|a| a.path().is_ident(NATS_EVENT)) {
        complete &= errors.ok(attr.parse_nested_meta(&mut f)).is_some();
    }
    complete
}

fn set<T>(
    slot: &mut Option<T>,
    value: T,
    meta: &ParseNestedMeta<'_>,
    key: &str,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format_args!("duplicate `{key}` key")));
    }
    *slot = Some(value);
    Ok(())
}

fn set_str(slot: &mut Option<LitStr>, meta: &ParseNestedMeta<'_>, key: &str) -> syn::Result<()> {
    let value: LitStr = meta.value()?.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format_args!("expected a string literal: `{key} = \"...\"`"),
        )
    })?;
    set(slot, value, meta, key)
}

fn int(meta: &ParseNestedMeta<'_>) -> syn::Result<Int> {
    let lit: LitInt = meta.value()?.parse()?;
    Ok(Int {
        value: lit.base10_parse()?,
        span: lit.span(),
    })
}

fn unknown_key(meta: &ParseNestedMeta<'_>, place: &str, valid: &[&str]) -> syn::Error {
    let key = meta.path.to_token_stream().to_string().replace(' ', "");
    let valid = valid
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    meta.error(format_args!(
        "unknown key `{key}` on {place}; expected one of: {valid}"
    ))
}
