//! The generated code is hygienic: absolute paths only (clean under `unused_qualifications`),
//! no reliance on the prelude, and its locals do not capture user names.
#![deny(unused_qualifications, warnings)]

use cim_nats::{AggregateId, DecodeError, EventId, MessageIdentity, NatsEvent};

mod no_prelude {
    #![no_implicit_prelude]

    use ::cim_nats::{EventId, MessageIdentity, NatsEvent, UpcastError};
    use ::serde_json::Value;

    /// Names the generated code must not pick up.
    #[allow(dead_code)]
    pub(crate) struct Option;
    #[allow(dead_code)]
    pub(crate) struct Some;
    #[allow(dead_code)]
    pub(crate) struct Clone;
    #[allow(dead_code)]
    pub(crate) struct Into;

    /// Upcasters named like the generated function's parameters.
    pub(crate) fn json(mut v: Value) -> ::core::result::Result<Value, UpcastError> {
        v["Made"]["two"] = ::serde_json::Value::Bool(true);
        ::core::result::Result::Ok(v)
    }

    /// A `fields` upcaster: it gets the variant's content.
    pub(crate) fn from(mut v: Value) -> ::core::result::Result<Value, UpcastError> {
        v["three"] = ::serde_json::Value::Bool(true);
        ::core::result::Result::Ok(v)
    }

    #[derive(::core::fmt::Debug, ::serde::Serialize, ::serde::Deserialize, NatsEvent)]
    #[nats_event(domain = "hygiene", aggregate = "thing")]
    pub(crate) enum Event {
        #[nats_event(
            operation = "made",
            version = 3,
            upcast(from = 1, with = json),
            upcast(from = 2, fields = from)
        )]
        Made {
            #[nats_event(event_id)]
            field: EventId,
            #[nats_event(aggregate_id)]
            source: ::std::string::String,
            two: bool,
            three: bool,
        },
        #[nats_event(operation = "unmade")]
        Unmade(
            #[nats_event(event_id)] EventId,
            #[nats_event(identity)] MessageIdentity,
        ),
    }
}

use no_prelude::Event;

#[test]
fn generated_code_is_hygienic() {
    let id = EventId::new();
    let event = Event::Made {
        field: id,
        source: "t-1".to_owned(),
        two: true,
        three: true,
    };
    assert_eq!(event.event_id(), Some(id));
    assert_eq!(event.message_identity(), None);
    let identity = MessageIdentity::new_from_user("hygiene");
    assert_eq!(
        Event::Unmade(id, identity.clone()).message_identity(),
        Some(&identity)
    );
    assert_eq!(
        event.aggregate_id().unwrap(),
        Some(AggregateId::new("t-1").unwrap())
    );
    assert_eq!(
        Event::SUBJECTS,
        ["hygiene.thing.made", "hygiene.thing.unmade"]
    );

    let v1 = serde_json::json!({"Made": {"field": id, "source": "t-1"}});
    let payload = serde_json::to_vec(&v1).unwrap();
    let event = Event::decode("Made", 1, &payload).unwrap();
    assert!(matches!(
        event,
        Event::Made {
            two: true,
            three: true,
            ..
        }
    ));
    assert!(matches!(
        Event::decode("Made", 4, &payload),
        Err(DecodeError::UnknownVersion { current: 3, .. })
    ));
}

mod ids_without_prelude {
    #![no_implicit_prelude]

    /// Names the generated code must not pick up.
    #[allow(dead_code)]
    pub(crate) struct Result;
    #[allow(dead_code)]
    pub(crate) struct Ok;
    #[allow(dead_code)]
    pub(crate) struct Uuid;

    #[derive(
        ::core::clone::Clone,
        ::core::marker::Copy,
        ::core::cmp::PartialEq,
        ::core::cmp::Eq,
        ::cim_nats::EntityId,
    )]
    #[entity_id(aggregate)]
    pub(crate) struct ThingId(::uuid::Uuid);
}

#[test]
fn entity_ids_need_no_prelude() {
    let id = ids_without_prelude::ThingId::new();
    let parsed: ids_without_prelude::ThingId = id.to_string().parse().unwrap();
    assert!(parsed == id);
    assert_eq!(AggregateId::from(id).as_str(), id.to_string());
}
