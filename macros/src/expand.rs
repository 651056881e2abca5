//! The generated `impl NatsEvent`. Every path is absolute (`::cim_nats::__private::...`,
//! `::core::...`), every local is `Span::mixed_site()`, and all static strings are literals
//! computed here.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, Type};

use crate::ast::Input;
use crate::errors::Errors;
use crate::fallback;
use crate::valid::{self, Event, Marked, Model};

/// Expands `#[derive(NatsEvent)]` on `input`: the impl, or the errors (with a fallback impl
/// when the input is an enum, so that uses of the trait do not add errors of their own).
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let ast = match Input::from_syn(input, &mut errors) {
        Ok(ast) => ast,
        Err(error) => return error.to_compile_error(),
    };
    match valid::check(&ast, errors) {
        Ok(model) => impl_nats_event(&model),
        Err(error) => {
            let error = error.to_compile_error();
            let fallback = fallback::impl_nats_event(&input.ident);
            quote!(#error #fallback)
        }
    }
}

fn impl_nats_event(model: &Model<'_>) -> TokenStream {
    let ident = model.ident;
    let domain = &model.domain;
    let domain_wildcard = format!("{domain}.>");
    let events = model.events.iter().map(|event| descriptor(model, event));
    let event_types = model.events.iter().map(|e| &e.event_type);
    let subjects = distinct(model.events.iter().map(|e| model.subject(e)));
    let wildcards = distinct(model.events.iter().map(|e| e.aggregate.clone()))
        .into_iter()
        .map(|aggregate| {
            let wildcard = format!("{domain}.{aggregate}.>");
            quote!((#aggregate, #wildcard))
        });
    let descriptor_fn = descriptor_fn(model);
    let event_id_fn = event_id_fn(model);
    let aggregate_id_fn = aggregate_id_fn(model);
    let message_identity_fn = message_identity_fn(model);
    let set_event_id_fn = set_event_id_fn(model);
    let upcast_fn = upcast_fn(model);
    let filters = model.events.iter().map(|event| {
        let name = Ident::new(
            &format!("{}_EVENTS", screaming_snake(&event.ident.to_string())),
            event.ident.span(),
        );
        let filter = format!("{}.*", model.subject(event));
        let doc = format!(
            "The subject filter of every `{}` event: `{filter}` (for a subscriber's `subject`).",
            event.ident
        );
        quote! {
            #[doc = #doc]
            pub const #name: &'static str = #filter;
        }
    });

    quote! {
        #[automatically_derived]
        impl #ident {
            #(#filters)*
        }

        #[automatically_derived]
        impl ::cim_nats::__private::NatsEvent for #ident {
            const SCHEMA: ::cim_nats::__private::Schema = ::cim_nats::__private::Schema {
                domain: #domain,
                events: &[#(#events),*],
                event_types: &[#(#event_types),*],
                subjects: &[#(#subjects),*],
                entity_wildcards: &[#(#wildcards),*],
                domain_wildcard: #domain_wildcard,
            };

            #descriptor_fn
            #event_id_fn
            #aggregate_id_fn
            #message_identity_fn
            #set_event_id_fn
            #upcast_fn
        }
    }
}

fn descriptor(model: &Model<'_>, event: &Event<'_>) -> TokenStream {
    let Event {
        event_type,
        aggregate,
        operation,
        version,
        ..
    } = event;
    let subject = model.subject(event);
    let from = event.upcasts.iter().map(|(from, _, _)| from);
    quote! {
        ::cim_nats::__private::EventDescriptor {
            event_type: #event_type,
            entity_kind: #aggregate,
            operation: #operation,
            version: #version,
            upcasts_from: &[#(#from),*],
            subject: #subject,
        }
    }
}

fn descriptor_fn(model: &Model<'_>) -> TokenStream {
    let body = if model.events.is_empty() {
        quote!(match *self {})
    } else {
        let arms = model.events.iter().enumerate().map(|(i, event)| {
            let variant = event.ident;
            quote! {
                Self::#variant { .. } => &<Self as ::cim_nats::__private::NatsEvent>::EVENTS[#i]
            }
        });
        quote!(match self { #(#arms,)* })
    };
    quote! {
        fn descriptor(&self) -> &'static ::cim_nats::__private::EventDescriptor {
            #body
        }
    }
}

fn event_id_fn(model: &Model<'_>) -> TokenStream {
    let field = Ident::new("field", Span::mixed_site());
    let arms: Vec<_> = model
        .events
        .iter()
        .filter_map(|event| {
            let variant = event.ident;
            let Marked { member, ty } = event.event_id?;
            // A type that does not convert to and from `EventId` is reported at the field's
            // type, once for the getter and the setter (the same obligation at the same span).
            let value = Ident::new("field", Span::mixed_site().located_at(ty.span()));
            let id = quote_spanned! {located_at(ty)=>
                ::cim_nats::__private::EventIdField::get_event_id(#value)
            };
            Some(quote! {
                Self::#variant { #member: #field, .. } => ::core::option::Option::Some(#id)
            })
        })
        .collect();
    let body = match_marked(model, &arms, quote!(::core::option::Option::None));
    quote! {
        fn event_id(&self) -> ::core::option::Option<::cim_nats::__private::EventId> {
            #body
        }
    }
}

/// Overrides the trait's `message_identity` (which returns `None`) when a variant marks a field
/// with `#[nats_event(identity)]`; the field must be a `MessageIdentity`.
fn message_identity_fn(model: &Model<'_>) -> Option<TokenStream> {
    let field = Ident::new("field", Span::mixed_site());
    // Named by its public path: `::cim_nats::__private` does not re-export it.
    let identity = quote!(::cim_nats::__private::MessageIdentity);
    let arms: Vec<_> = model
        .events
        .iter()
        .filter_map(|event| {
            let variant = event.ident;
            let Marked { member, ty } = event.identity?;
            // A field of another type is reported at the field's type (once for the getter
            // and the setter).
            let value = Ident::new("field", Span::mixed_site().located_at(ty.span()));
            let id = quote_spanned! {located_at(ty)=>
                ::cim_nats::__private::IdentityField::identity(#value)
            };
            Some(quote! {
                Self::#variant { #member: #field, .. } => ::core::option::Option::Some(#id)
            })
        })
        .collect();
    if arms.is_empty() {
        return None;
    }
    let body = match_marked(model, &arms, quote!(::core::option::Option::None));
    Some(quote! {
        fn message_identity(&self) -> ::core::option::Option<&#identity> {
            #body
        }
    })
}

/// Overrides the trait's `set_event_id` (which does nothing) when a variant marks its own id
/// (`#[nats_event(event_id)]`, set from the id: its type must be `From<EventId>`) or the
/// identity it carries (`#[nats_event(identity)]`, whose message id becomes the id).
fn set_event_id_fn(model: &Model<'_>) -> Option<TokenStream> {
    let id = Ident::new("id", Span::mixed_site());
    let p = quote!(::cim_nats::__private);
    let arms: Vec<_> = model
        .events
        .iter()
        .filter_map(|event| {
            if event.event_id.is_none() && event.identity.is_none() {
                return None;
            }
            let variant = event.ident;
            let mut bindings = Vec::new();
            let mut sets = Vec::new();
            if let Some(Marked { member, ty }) = &event.event_id {
                let field = Ident::new("event_id_field", Span::mixed_site());
                let value = Ident::new("event_id_field", Span::mixed_site().located_at(ty.span()));
                bindings.push(quote!(#member: #field));
                sets.push(quote_spanned! {located_at(ty)=>
                    ::cim_nats::__private::EventIdField::set_event_id(#value, #id);
                });
            }
            if let Some(Marked { member, ty }) = &event.identity {
                let field = Ident::new("identity_field", Span::mixed_site());
                let value = Ident::new("identity_field", Span::mixed_site().located_at(ty.span()));
                bindings.push(quote!(#member: #field));
                let identity = quote_spanned! {located_at(ty)=>
                    ::cim_nats::__private::IdentityField::identity_mut(#value)
                };
                sets.push(quote! {
                    #identity.message_id = #p::MessageId::from_uuid(*#p::EventId::as_uuid(&#id));
                });
            }
            Some(quote! {
                Self::#variant { #(#bindings,)* .. } => { #(#sets)* }
            })
        })
        .collect();
    if arms.is_empty() {
        return None;
    }
    let body = if arms.len() == model.events.len() {
        quote!(match self { #(#arms)* })
    } else {
        quote!(match self { #(#arms)* _ => {} })
    };
    Some(quote! {
        fn set_event_id(&mut self, #id: #p::EventId) {
            #body
        }
    })
}

/// The aggregate id is built from the field by the cheapest path its type allows, chosen at
/// compile time by method resolution (autoref specialisation): an `AggregateId` is cloned
/// (an `Arc` clone), a `Uuid` is formatted on the stack and needs no check, a string-like
/// value is checked in place, anything else goes through `Display`.
fn aggregate_id_fn(model: &Model<'_>) -> TokenStream {
    let field = Ident::new("field", Span::mixed_site());
    let arms: Vec<_> = model
        .events
        .iter()
        .filter_map(|event| {
            let variant = event.ident;
            let Marked { member, ty } = event.aggregate_id?;
            // A type that is none of the four is reported at the field's type, as not `Display`.
            let id = quote_spanned! {located_at(ty)=>
                (&&&&Source(#field)).to_aggregate_id()
            };
            Some(quote! {
                Self::#variant { #member: #field, .. } => ::core::result::Result::map(
                    #id,
                    ::core::option::Option::Some,
                )
            })
        })
        .collect();
    let body = match_marked(
        model,
        &arms,
        quote!(::core::result::Result::Ok(::core::option::Option::None)),
    );
    let helpers = (!arms.is_empty()).then(|| {
        quote! {
            type Id = ::core::result::Result<
                ::cim_nats::__private::AggregateId,
                ::cim_nats::__private::InvalidSubject,
            >;
            struct Source<'a, T: ?::core::marker::Sized>(&'a T);
            trait FromAggregateId {
                fn to_aggregate_id(&self) -> Id;
            }
            impl FromAggregateId for &&&Source<'_, ::cim_nats::__private::AggregateId> {
                fn to_aggregate_id(&self) -> Id {
                    ::core::result::Result::Ok(::core::clone::Clone::clone(self.0))
                }
            }
            trait FromUuid {
                fn to_aggregate_id(&self) -> Id;
            }
            impl FromUuid for &&Source<'_, ::cim_nats::__private::uuid::Uuid> {
                fn to_aggregate_id(&self) -> Id {
                    ::core::result::Result::Ok(::core::convert::From::from(*self.0))
                }
            }
            trait FromStrLike {
                fn to_aggregate_id(&self) -> Id;
            }
            impl<T> FromStrLike for &Source<'_, T>
            where
                T: ?::core::marker::Sized + ::core::convert::AsRef<::core::primitive::str>,
            {
                fn to_aggregate_id(&self) -> Id {
                    ::cim_nats::__private::AggregateId::new(
                        ::core::convert::AsRef::<::core::primitive::str>::as_ref(self.0),
                    )
                }
            }
            // The bound is on the method, not the impl: a type that is not `Display` selects
            // this impl and fails with "`T` doesn't implement `Display`".
            trait FromDisplay<T: ?::core::marker::Sized> {
                fn to_aggregate_id(&self) -> Id
                where
                    T: ::core::fmt::Display;
            }
            impl<T: ?::core::marker::Sized> FromDisplay<T> for Source<'_, T> {
                fn to_aggregate_id(&self) -> Id
                where
                    T: ::core::fmt::Display,
                {
                    ::cim_nats::__private::AggregateId::new(
                        ::std::string::ToString::to_string(self.0),
                    )
                }
            }
        }
    });
    quote! {
        fn aggregate_id(
            &self,
        ) -> ::core::result::Result<
            ::core::option::Option<::cim_nats::__private::AggregateId>,
            ::cim_nats::__private::InvalidSubject,
        > {
            #helpers
            #body
        }
    }
}

/// `match self` over the arms of the variants that have a marked field, with `none` for the
/// others.
fn match_marked(model: &Model<'_>, arms: &[TokenStream], none: TokenStream) -> TokenStream {
    if arms.is_empty() {
        none
    } else if arms.len() == model.events.len() {
        quote!(match self { #(#arms,)* })
    } else {
        quote!(match self { #(#arms,)* _ => #none, })
    }
}

fn upcast_fn(model: &Model<'_>) -> TokenStream {
    let event_type = Ident::new("event_type", Span::mixed_site());
    let from = Ident::new("from", Span::mixed_site());
    let json = Ident::new("json", Span::mixed_site());
    let p = quote!(::cim_nats::__private);
    let arms = model.events.iter().enumerate().map(|(i, event)| {
        let name = &event.event_type;
        let current = event.version;
        let chain = event.upcasts.first().map(|&(lowest, _, _)| {
            let last = current - 1;
            let steps = event.upcasts.iter().map(|&(step, with, fields)| {
                let upcaster = quote_spanned! {with.span()=>
                    let upcaster: fn(
                        #p::serde_json::Value,
                    ) -> ::core::result::Result<#p::serde_json::Value, #p::UpcastError> = #with;
                };
                let failed = quote! {
                    |source| #p::DecodeError::Upcast {
                        event_type: ::std::borrow::ToOwned::to_owned(#event_type),
                        from: #step,
                        source,
                    }
                };
                let apply = if fields {
                    // The stored JSON is `{"Variant": content}`: the upcaster gets the content.
                    let outer = Ident::new("outer", Span::mixed_site());
                    let key = Ident::new("key", Span::mixed_site());
                    let content = Ident::new("content", Span::mixed_site());
                    let not_variant = quote! {
                        return ::core::result::Result::Err((#failed)(#p::UpcastError::new(
                            "the stored JSON is not of the form {\"Variant\": content}",
                        )))
                    };
                    quote! {
                        #upcaster
                        let mut #outer = match #json {
                            #p::serde_json::Value::Object(#outer) if #outer.len() == 1 => #outer,
                            _ => #not_variant,
                        };
                        let ::core::option::Option::Some((#key, #content)) = ::core::option::Option::map(
                            ::core::iter::Iterator::next(&mut #outer.iter_mut()),
                            |(k, v)| (::core::clone::Clone::clone(k), ::core::mem::take(v)),
                        ) else {
                            #not_variant
                        };
                        let #content =
                            ::core::result::Result::map_err(upcaster(#content), #failed)?;
                        #outer.insert(#key, #content);
                        #json = #p::serde_json::Value::Object(#outer);
                    }
                } else {
                    quote! {
                        #upcaster
                        #json = ::core::result::Result::map_err(upcaster(#json), #failed)?;
                    }
                };
                // Every version in the arm's range takes the last step.
                if step == last {
                    quote!({ #apply })
                } else {
                    quote!(if #from <= #step { #apply })
                }
            });
            quote! {
                #lowest..=#last => {
                    let mut #json = #json;
                    #(#steps)*
                    ::core::result::Result::Ok(#json)
                }
            }
        });
        quote! {
            #name => match #from {
                #current => ::core::result::Result::Ok(#json),
                #chain
                _ => ::core::result::Result::Err(#p::DecodeError::UnknownVersion {
                    event_type: ::std::borrow::ToOwned::to_owned(#event_type),
                    version: #from,
                    current: #current,
                    upcasts_from: <Self as #p::NatsEvent>::EVENTS[#i].upcasts_from,
                }),
            }
        }
    });
    quote! {
        fn upcast(
            #event_type: &::core::primitive::str,
            #from: ::core::primitive::u32,
            #json: #p::serde_json::Value,
        ) -> ::core::result::Result<#p::serde_json::Value, #p::DecodeError> {
            match #event_type {
                #(#arms,)*
                _ => ::core::result::Result::Err(#p::DecodeError::UnknownEventType {
                    domain: <Self as #p::NatsEvent>::DOMAIN,
                    event_type: ::std::borrow::ToOwned::to_owned(#event_type),
                }),
            }
        }
    }
}

/// A span with the hygiene of generated code, shown at `ty` in error messages.
fn located_at(ty: &Type) -> Span {
    Span::call_site().located_at(ty.span())
}

/// The values in order of first appearance, without repeats.
fn distinct(values: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        if !out.contains(&value) {
            out.push(value);
        }
    }
    out
}

/// `ComputeResourceRegistered` -> `COMPUTE_RESOURCE_REGISTERED`.
fn screaming_snake(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let mut out = String::with_capacity(ident.len() + 4);
    let mut previous_lower = false;
    for c in ident.chars() {
        if c.is_uppercase() && previous_lower {
            out.push('_');
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        out.extend(c.to_uppercase());
    }
    out
}
