//! The impl emitted next to compile errors: it keeps the rest of the crate type-checking, so the
//! user sees the attribute error and not a cascade of "`NatsEvent` is not implemented" errors.
//! Its values are never meant to be used: the crate does not compile.

use proc_macro2::TokenStream;
use quote::quote;
use syn::Ident;

pub(crate) fn impl_nats_event(ident: &Ident) -> TokenStream {
    let p = quote!(::cim_nats::__private);
    quote! {
        #[automatically_derived]
        impl #p::NatsEvent for #ident {
            const SCHEMA: #p::Schema = #p::Schema {
                domain: "",
                events: &[],
                event_types: &[],
                subjects: &[],
                entity_wildcards: &[],
                domain_wildcard: "",
            };

            fn descriptor(&self) -> &'static #p::EventDescriptor {
                &#p::EventDescriptor {
                    event_type: "",
                    entity_kind: "",
                    operation: "",
                    version: 0,
                    upcasts_from: &[],
                    subject: "",
                }
            }

            fn event_id(&self) -> ::core::option::Option<#p::EventId> {
                ::core::option::Option::None
            }

            fn aggregate_id(
                &self,
            ) -> ::core::result::Result<
                ::core::option::Option<#p::AggregateId>,
                #p::InvalidSubject,
            > {
                ::core::result::Result::Ok(::core::option::Option::None)
            }

            fn upcast(
                event_type: &::core::primitive::str,
                _: ::core::primitive::u32,
                _: #p::serde_json::Value,
            ) -> ::core::result::Result<#p::serde_json::Value, #p::DecodeError> {
                ::core::result::Result::Err(#p::DecodeError::UnknownEventType {
                    domain: "",
                    event_type: ::std::borrow::ToOwned::to_owned(event_type),
                })
            }
        }
    }
}
