//! `#[derive(EntityId)]`: a tuple struct around one `Uuid` becomes a typed id.

use proc_macro2::TokenStream;
use quote::quote;

const SHAPE: &str =
    "#[derive(EntityId)] is for a tuple struct with one `Uuid` field, e.g. `struct OrderId(Uuid);`";

pub(crate) fn derive(input: &syn::DeriveInput) -> TokenStream {
    expand(input).unwrap_or_else(|e| e.to_compile_error())
}

fn expand(input: &syn::DeriveInput) -> syn::Result<TokenStream> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &input.generics,
            "#[derive(EntityId)] takes no generic parameters",
        ));
    }
    let field = match &input.data {
        syn::Data::Struct(syn::DataStruct {
            fields: syn::Fields::Unnamed(fields),
            ..
        }) if fields.unnamed.len() == 1 => &fields.unnamed[0],
        _ => return Err(syn::Error::new_spanned(&input.ident, SHAPE)),
    };
    let names_uuid = matches!(&field.ty, syn::Type::Path(t)
        if t.qself.is_none() && t.path.segments.last().is_some_and(|s| s.ident == "Uuid"));
    if !names_uuid {
        return Err(syn::Error::new_spanned(
            &field.ty,
            "the field of a #[derive(EntityId)] struct must be a `Uuid` (uuid::Uuid)",
        ));
    }
    let aggregate = aggregate_attribute(&input.attrs)?;
    let name = &input.ident;
    let field_ty = &field.ty;
    let p = quote!(::cim_nats::__private);
    let uuid = quote!(#p::uuid::Uuid);
    let name_str = name.to_string();
    let into_aggregate = aggregate.then(|| {
        quote! {
            #[automatically_derived]
            impl ::core::convert::From<#name> for #p::AggregateId {
                /// A UUID is always a valid subject token.
                fn from(id: #name) -> Self {
                    <#p::AggregateId as ::core::convert::From<#uuid>>::from(id.0)
                }
            }
        }
    });
    Ok(quote! {
        #into_aggregate

        // A type named `Uuid` that is not uuid's fails here.
        const _: fn(#field_ty) -> #uuid = |id| id;

        #[automatically_derived]
        impl #name {
            /// A new, unique id (UUID version 7: ids sort by creation time).
            #[must_use]
            pub fn new() -> Self {
                Self(#uuid::now_v7())
            }

            /// Wraps an existing UUID.
            #[must_use]
            pub const fn from_uuid(id: #uuid) -> Self {
                Self(id)
            }

            /// The underlying UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> &#uuid {
                &self.0
            }
        }

        #[automatically_derived]
        impl ::core::default::Default for #name {
            /// A new, unique id, as `new()`.
            fn default() -> Self {
                Self::new()
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<#uuid> for #name {
            fn from(id: #uuid) -> Self {
                Self(id)
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<#name> for #uuid {
            fn from(id: #name) -> Self {
                id.0
            }
        }


        #[automatically_derived]
        impl ::core::str::FromStr for #name {
            type Err = #p::IdParseError;

            /// Any textual UUID form `Uuid::parse_str` accepts.
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                match #uuid::parse_str(s) {
                    ::core::result::Result::Ok(id) => ::core::result::Result::Ok(Self(id)),
                    ::core::result::Result::Err(e) => {
                        ::core::result::Result::Err(#p::IdParseError::new(#name_str, s, e))
                    }
                }
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for #name {
            /// The hyphenated lowercase UUID.
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0, f)
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for #name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::write!(f, "{}({})", #name_str, self.0)
            }
        }

        #[automatically_derived]
        impl #p::serde::Serialize for #name {
            fn serialize<S>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error>
            where
                S: #p::serde::Serializer,
            {
                #p::serde::Serialize::serialize(&self.0, serializer)
            }
        }

        #[automatically_derived]
        impl<'de> #p::serde::Deserialize<'de> for #name {
            fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
            where
                D: #p::serde::Deserializer<'de>,
            {
                match <#uuid as #p::serde::Deserialize<'de>>::deserialize(deserializer) {
                    ::core::result::Result::Ok(id) => ::core::result::Result::Ok(Self(id)),
                    ::core::result::Result::Err(e) => ::core::result::Result::Err(e),
                }
            }
        }
    })
}

/// `#[entity_id(aggregate)]`: the id names an aggregate, and converts into `AggregateId`.
fn aggregate_attribute(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut aggregate = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("entity_id")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("aggregate") {
                if aggregate {
                    return Err(meta.error("`aggregate` is given twice"));
                }
                aggregate = true;
                Ok(())
            } else {
                Err(meta.error("unknown key; #[entity_id(..)] takes `aggregate`"))
            }
        })?;
    }
    Ok(aggregate)
}
