//! The meaning checks: subject tokens, required keys, duplicate routes and event types,
//! schema versions and upcast chains, marked fields. A valid input becomes a [`Model`] with
//! every default resolved.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::{Ident, LitStr, Member, Path, Type};

use crate::ast::{Field, Input, Style, Variant};
use crate::attr::{EnumAttrs, Upcast};
use crate::errors::Errors;
use crate::symbol::{
    AGGREGATE, AGGREGATE_ID, DOMAIN, EVENT_ID, IDENTITY, NATS_EVENT, OPERATION, UPCAST, VERSION,
    WITH,
};

/// A checked enum: everything the expansion needs.
pub(crate) struct Model<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) domain: String,
    pub(crate) events: Vec<Event<'a>>,
}

/// A checked variant.
pub(crate) struct Event<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) event_type: String,
    pub(crate) aggregate: String,
    pub(crate) operation: String,
    pub(crate) version: u32,
    /// The upcasters, by the version they read, sorted: a contiguous range ending at
    /// `version - 1`.
    /// The upcast chain by `from`: the function, and whether it takes the variant's content
    /// only (`fields = path`).
    pub(crate) upcasts: Vec<(u32, &'a Path, bool)>,
    pub(crate) event_id: Option<Marked<'a>>,
    pub(crate) aggregate_id: Option<Marked<'a>>,
    pub(crate) identity: Option<Marked<'a>>,
}

/// A field marked as the event id, the aggregate id or the identity.
#[derive(Clone, Copy)]
pub(crate) struct Marked<'a> {
    pub(crate) member: &'a Member,
    pub(crate) ty: &'a Type,
}

impl<'a> From<&'a Field<'_>> for Marked<'a> {
    fn from(field: &'a Field<'_>) -> Self {
        Self {
            member: &field.member,
            ty: field.ty,
        }
    }
}

impl Model<'_> {
    /// The routing subject `{domain}.{aggregate}.{operation}` of `event`.
    pub(crate) fn subject(&self, event: &Event<'_>) -> String {
        format!("{}.{}.{}", self.domain, event.aggregate, event.operation)
    }
}

/// Checks `input`, adding to the errors already found while parsing it.
pub(crate) fn check<'a>(input: &'a Input<'_>, mut errors: Errors) -> syn::Result<Model<'a>> {
    let domain = match &input.attrs.domain {
        Some(lit) => token(lit, "domain", &mut errors),
        None if input.attrs.incomplete => None,
        None => {
            errors.at(
                input.ident.span(),
                format_args!(
                    "missing `{DOMAIN}`: add `#[{NATS_EVENT}({DOMAIN} = \"...\")]` to the enum; \
                     the domain is the first token of every subject"
                ),
            );
            None
        }
    };
    let default_aggregate = input.attrs.aggregate.as_ref();
    if let Some(lit) = default_aggregate {
        token(lit, "aggregate", &mut errors);
    }

    let mut events = Vec::with_capacity(input.variants.len());
    let mut by_type = HashMap::new();
    let mut by_route = HashMap::new();
    for variant in &input.variants {
        let Some(event) = check_variant(input, variant, &mut errors) else {
            continue;
        };
        let type_span = variant
            .attrs
            .event_type
            .as_ref()
            .map_or_else(|| variant.ident.span(), LitStr::span);
        if let Some(first) = first_of(&mut by_type, event.event_type.clone(), event.ident) {
            errors.at(
                type_span,
                format_args!(
                    "event type `{}` is already used by variant `{first}`; \
                     give one of them another `event_type = \"...\"`",
                    event.event_type
                ),
            );
        }
        let route = (
            event.aggregate.clone(),
            event.operation.clone(),
            event.version,
        );
        if let Some(first) = first_of(&mut by_route, route, event.ident) {
            let span = variant
                .attrs
                .operation
                .as_ref()
                .map_or_else(|| variant.ident.span(), LitStr::span);
            errors.at(
                span,
                format_args!(
                    "variant `{}` has the same aggregate, operation and version as `{first}` \
                     (aggregate `{}`, operation `{}`, version {}); \
                     give one of them another operation or version",
                    event.ident, event.aggregate, event.operation, event.version
                ),
            );
        }
        events.push(event);
    }
    let model = Model {
        ident: input.ident,
        domain: domain.unwrap_or_default(),
        events,
    };
    errors.finish(model)
}

/// The variant that first used `key`, if one did; else records `variant` as the first.
fn first_of<'a, K: std::hash::Hash + Eq>(
    seen: &mut HashMap<K, &'a Ident>,
    key: K,
    variant: &'a Ident,
) -> Option<&'a Ident> {
    match seen.entry(key) {
        Entry::Occupied(first) => Some(*first.get()),
        Entry::Vacant(slot) => {
            slot.insert(variant);
            None
        }
    }
}

/// Checks one variant; `None` if it cannot take part in the checks across variants.
fn check_variant<'a>(
    input: &Input<'_>,
    variant: &'a Variant<'_>,
    errors: &mut Errors,
) -> Option<Event<'a>> {
    let attrs = &variant.attrs;
    let name = variant.ident.unraw().to_string();
    // Keys after a parse error are unknown: do not report them as missing.
    let incomplete = attrs.incomplete || input.attrs.incomplete;

    let aggregate = match (&attrs.aggregate, &input.attrs.aggregate) {
        (Some(lit), _) => token(lit, "aggregate", errors),
        // Checked once, on the enum.
        (None, Some(lit)) => Some(lit.value()),
        (None, None) if incomplete => None,
        (None, None) => {
            errors.at(
                variant.ident.span(),
                format_args!(
                    "variant `{name}` has no aggregate: add `{AGGREGATE} = \"...\"` to its \
                     `#[{NATS_EVENT}(...)]`, or a default `#[{NATS_EVENT}({AGGREGATE} = \"...\")]` \
                     to the enum"
                ),
            );
            None
        }
    };
    let operation = match &attrs.operation {
        Some(lit) => token(lit, "operation", errors),
        None if attrs.incomplete => None,
        None => {
            errors.at(
                variant.ident.span(),
                format_args!(
                    "variant `{name}` has no operation: add \
                     `#[{NATS_EVENT}({OPERATION} = \"...\")]`, the third subject token"
                ),
            );
            None
        }
    };
    let event_type = match &attrs.event_type {
        Some(lit) => token(lit, "event type", errors),
        None => Some(name.clone()),
    };
    let version = match attrs.version {
        Some(v) if v.value == 0 => {
            errors.at(
                v.span,
                format_args!("`{VERSION}` must be at least 1: the first schema version is 1"),
            );
            None
        }
        Some(v) => Some(v.value),
        None => Some(1),
    };
    let upcasts = check_upcasts(
        &name,
        &attrs.upcasts,
        version,
        attrs.version.is_some(),
        errors,
    );
    let Marks {
        event_id,
        aggregate_id,
        identity,
    } = check_fields(&name, variant, &input.attrs, errors);
    if attrs.incomplete {
        return None;
    }
    Some(Event {
        ident: variant.ident,
        event_type: event_type?,
        aggregate: aggregate?,
        operation: operation?,
        version: version?,
        upcasts,
        event_id,
        aggregate_id,
        identity,
    })
}

/// Checks the upcast declarations against `version` (`None` if it is itself invalid) and
/// returns the chain sorted by `from`.
fn check_upcasts<'a>(
    name: &str,
    upcasts: &'a [Upcast],
    version: Option<u32>,
    explicit_version: bool,
    errors: &mut Errors,
) -> Vec<(u32, &'a Path, bool)> {
    let mut chain: BTreeMap<u32, &Upcast> = BTreeMap::new();
    for upcast in upcasts {
        let from = upcast.from.value;
        if from == 0 {
            errors.at(
                upcast.from.span,
                "upcast `from` must be at least 1: the first schema version is 1",
            );
            continue;
        }
        if let Some(version) = version.filter(|v| from >= *v) {
            let why = if explicit_version {
                format!("`{name}` is at version {version}")
            } else {
                format!("`{name}` has no `{VERSION} = N`, so it is at version 1")
            };
            errors.at(
                upcast.from.span,
                format_args!(
                    "cannot upcast from version {from}: {why}; an upcaster reads an older \
                     version, so `from` must be lower than the variant's `{VERSION}`"
                ),
            );
            continue;
        }
        if chain.insert(from, upcast).is_some() {
            errors.at(
                upcast.from.span,
                format_args!(
                    "duplicate `{UPCAST}(from = {from}, ...)`: each version has one upcaster"
                ),
            );
        }
    }
    if let (Some(version), Some(&lowest)) = (version, chain.keys().next()) {
        if let Some(missing) = (lowest..version).find(|v| !chain.contains_key(v)) {
            let before = chain[&(missing - 1)];
            errors.at(
                before.from.span,
                format_args!(
                    "the upcast chain of `{name}` has a gap: `{UPCAST}(from = {}, ...)` yields \
                     version {missing}, but there is no `{UPCAST}(from = {missing}, {WITH} = ...)` \
                     to carry it on to version {version}",
                    missing - 1
                ),
            );
        }
    }
    chain
        .into_iter()
        .map(|(from, upcast)| (from, &upcast.with, upcast.fields))
        .collect()
}

/// The marked fields of one variant.
struct Marks<'a> {
    event_id: Option<Marked<'a>>,
    aggregate_id: Option<Marked<'a>>,
    identity: Option<Marked<'a>>,
}

/// Finds the event id, aggregate id and identity fields of a variant.
fn check_fields<'a>(
    name: &str,
    variant: &'a Variant<'_>,
    on_enum: &EnumAttrs,
    errors: &mut Errors,
) -> Marks<'a> {
    let mut event_id = named_field(name, variant, on_enum.event_id.as_ref(), EVENT_ID, errors);
    let mut aggregate_id = named_field(
        name,
        variant,
        on_enum.aggregate_id.as_ref(),
        AGGREGATE_ID,
        errors,
    );
    let mut identity = named_field(name, variant, on_enum.identity.as_ref(), IDENTITY, errors);
    for field in &variant.fields {
        if let Some(span) = field.attrs.event_id {
            mark(name, "event id", &mut event_id, field, span, errors);
        }
        if let Some(span) = field.attrs.aggregate_id {
            mark(name, "aggregate id", &mut aggregate_id, field, span, errors);
        }
        if let Some(span) = field.attrs.identity {
            mark(name, "identity", &mut identity, field, span, errors);
        }
    }
    Marks {
        event_id,
        aggregate_id,
        identity,
    }
}

/// The field of a struct variant that the enum's `key = "field"` names, if it does.
fn named_field<'a>(
    name: &str,
    variant: &'a Variant<'_>,
    named: Option<&LitStr>,
    key: &str,
    errors: &mut Errors,
) -> Option<Marked<'a>> {
    let (Some(lit), Style::Struct) = (named, variant.style) else {
        return None;
    };
    let wanted = lit.value();
    match variant
        .fields
        .iter()
        .find(|f| f.ident.is_some_and(|i| i.unraw() == wanted))
    {
        Some(field) => Some(Marked::from(field)),
        None => {
            errors.at(
                variant.ident.span(),
                format_args!(
                    "variant `{name}` has no field `{wanted}`, which the enum's \
                     `{key} = \"{wanted}\"` requires of every struct variant"
                ),
            );
            None
        }
    }
}

fn mark<'a>(
    name: &str,
    what: &str,
    slot: &mut Option<Marked<'a>>,
    field: &'a Field<'_>,
    span: Span,
    errors: &mut Errors,
) {
    match slot {
        Some(first) if *first.member != field.member => errors.at(
            span,
            format_args!(
                "variant `{name}` has two {what} fields: field `{}` is already its {what}",
                MemberName(first.member)
            ),
        ),
        _ => *slot = Some(Marked::from(field)),
    }
}

/// Checks that `lit` can stand as a subject token, as `cim_nats::subject::validate_token` does
/// at run time.
fn token(lit: &LitStr, what: &str, errors: &mut Errors) -> Option<String> {
    let value = lit.value();
    let rule = if what == "event type" {
        "an event type"
    } else {
        "a subject token"
    };
    let problem = if value.is_empty() {
        Some("it is empty".to_owned())
    } else if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control())
    {
        Some(if c.is_whitespace() {
            "it contains whitespace".to_owned()
        } else if c.is_control() {
            "it contains a control character".to_owned()
        } else {
            format!("it contains `{c}`")
        })
    } else if value.len() > MAX_TOKEN_LEN {
        Some(format!("it is longer than {MAX_TOKEN_LEN} bytes"))
    } else {
        None
    };
    match problem {
        None => Some(value),
        Some(problem) => {
            errors.at(
                lit.span(),
                format_args!(
                    "invalid {what} {value:?}: {problem}; {rule} must not be empty \
                     and must not contain whitespace, `.`, `*` or `>`"
                ),
            );
            None
        }
    }
}

/// `cim_nats::subject::MAX_TOKEN_LEN`.
const MAX_TOKEN_LEN: usize = 256;

/// Shows a field as written: its name, or its index in a tuple variant.
struct MemberName<'a>(&'a Member);

impl Display for MemberName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Member::Named(ident) => Display::fmt(&ident.unraw(), f),
            Member::Unnamed(index) => Display::fmt(&index.index, f),
        }
    }
}
