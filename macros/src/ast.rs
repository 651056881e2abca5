//! The derive's input as a typed model: the enum, its variants and fields, each with its parsed
//! `#[nats_event(...)]` attributes.

use syn::{Data, DeriveInput, Fields, Ident, Member, Type};

use crate::attr::{self, EnumAttrs, FieldAttrs, VariantAttrs};
use crate::errors::Errors;

/// The enum the derive is applied to.
pub(crate) struct Input<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: EnumAttrs,
    pub(crate) variants: Vec<Variant<'a>>,
}

/// One variant: one event type.
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: VariantAttrs,
    pub(crate) style: Style,
    pub(crate) fields: Vec<Field<'a>>,
}

/// The shape of a variant.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Struct,
    Tuple,
    Unit,
}

/// One field of a variant.
pub(crate) struct Field<'a> {
    /// The field's name, or its index in a tuple variant.
    pub(crate) member: Member,
    pub(crate) ident: Option<&'a Ident>,
    pub(crate) ty: &'a Type,
    pub(crate) attrs: FieldAttrs,
}

impl<'a> Input<'a> {
    /// Models `input`. `Err` when it is not an enum without generics (nothing can be derived,
    /// not even a fallback); attribute errors are recorded in `errors` and the model is still
    /// returned.
    pub(crate) fn from_syn(input: &'a DeriveInput, errors: &mut Errors) -> syn::Result<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => return Err(not_enum(data.struct_token.span)),
            Data::Union(data) => return Err(not_enum(data.union_token.span)),
        };
        if let Some(param) = input.generics.params.first() {
            return Err(syn::Error::new_spanned(
                param,
                "NatsEvent cannot be derived for an enum with generic parameters: \
                 an event enum must be a concrete type",
            ));
        }
        let attrs = attr::enum_attrs(&input.attrs, errors);
        let variants = data
            .variants
            .iter()
            .map(|v| Variant::from_syn(v, errors))
            .collect();
        Ok(Self {
            ident: &input.ident,
            attrs,
            variants,
        })
    }
}

impl<'a> Variant<'a> {
    fn from_syn(variant: &'a syn::Variant, errors: &mut Errors) -> Self {
        let style = match variant.fields {
            Fields::Named(_) => Style::Struct,
            Fields::Unnamed(_) => Style::Tuple,
            Fields::Unit => Style::Unit,
        };
        let fields = variant
            .fields
            .iter()
            .zip(variant.fields.members())
            .map(|(field, member)| Field {
                member,
                ident: field.ident.as_ref(),
                ty: &field.ty,
                attrs: attr::field_attrs(&field.attrs, errors),
            })
            .collect();
        Self {
            ident: &variant.ident,
            attrs: attr::variant_attrs(&variant.attrs, errors),
            style,
            fields,
        }
    }
}

fn not_enum(span: proc_macro2::Span) -> syn::Error {
    syn::Error::new(
        span,
        "NatsEvent can only be derived for enums: one variant per event type",
    )
}
