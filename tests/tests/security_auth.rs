//! Authenticated and encrypted connections work through the framework's API: with a user and
//! password, a token, an nkey, TLS (a CA made by the test) and TLS with client certificates, a
//! store appends and reads an event and a subscriber receives it. Wrong credentials are refused
//! at connect.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::ConnectOptions;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::{NatsServer, NatsServerBuilder};
use cim_nats::{
    AggregateId, EventId, EventStore, EventStoreExt, ExpectedVersion, FnEventHandler, StoredEvent,
};
use support::bank::AccountEvent;

fn start(config: &str) -> NatsServer {
    NatsServerBuilder::new()
        .config(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The whole path on an authenticated connection: create the store, append, read back, and
/// receive the event in a subscriber.
async fn append_read_and_subscribe(client: async_nats::Client) {
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StoredEvent>();
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("bank.>")
        .handler(FnEventHandler::new(move |event: StoredEvent| {
            let _ = tx.send(event);
            Ok(())
        }))
        .deliver_policy(DeliverPolicy::All)
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let id = AggregateId::new("acc-1").unwrap();
    let opened = AccountEvent::Opened {
        id: EventId::new(),
        owner: "ada".to_owned(),
    };
    let result = store
        .append_events(
            &id,
            ExpectedVersion::NoStream,
            std::slice::from_ref(&opened),
            None,
        )
        .await
        .unwrap();
    assert_eq!(result.version, 1);
    let loaded = store.load_events::<AccountEvent>(&id, 0).await.unwrap();
    assert_eq!(loaded.len(), 1);
    // The event as appended, with the id the store gave it.
    let mut expected = opened.clone();
    cim_nats::NatsEvent::set_event_id(&mut expected, loaded[0].stored.event_id);
    assert_eq!(loaded[0].event, expected);
    let received = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the subscriber receives the event")
        .unwrap();
    assert_eq!(received.aggregate_id, id);
    assert_eq!(received.stream_sequence, result.sequences[0]);
    handle.shutdown().await.unwrap();
    assert_eq!(store.last_sequence().await.unwrap().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let server = start(r#"authorization { user: "writer", password: "pa55-w0rd" }"#);
    let refused = ConnectOptions::with_user_and_password("writer".into(), "wrong".into())
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "a wrong password must be refused");
    assert!(
        async_nats::connect(server.url()).await.is_err(),
        "no credentials must be refused"
    );
    let client = ConnectOptions::with_user_and_password("writer".into(), "pa55-w0rd".into())
        .connect(server.url())
        .await
        .unwrap();
    append_read_and_subscribe(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token() {
    let server = start(r#"authorization { token: "s3cret-t0ken" }"#);
    let refused = ConnectOptions::with_token("other".into())
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "a wrong token must be refused");
    let client = ConnectOptions::with_token("s3cret-t0ken".into())
        .connect(server.url())
        .await
        .unwrap();
    append_read_and_subscribe(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkey() {
    let user = nkeys::KeyPair::new_user();
    let server = start(&format!(
        r#"authorization {{ users: [ {{ nkey: "{}" }} ] }}"#,
        user.public_key()
    ));
    let stranger = nkeys::KeyPair::new_user();
    let refused = ConnectOptions::with_nkey(stranger.seed().unwrap())
        .connect(server.url())
        .await;
    assert!(refused.is_err(), "an unknown nkey must be refused");
    let client = ConnectOptions::with_nkey(user.seed().unwrap())
        .connect(server.url())
        .await
        .unwrap();
    append_read_and_subscribe(client).await;
}

/// A CA made for one test, and certificates it signs.
struct TestCa {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_file: PathBuf,
}

impl TestCa {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cim-nats test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        Self {
            dir,
            issuer: rcgen::Issuer::new(params, key),
            ca_file,
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `{stem}.pem` and
    /// `{stem}-key.pem`.
    fn issue(
        &self,
        stem: &str,
        names: &[&str],
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.path().join(format!("{stem}.pem"));
        let key_file = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn server_cert(&self) -> (PathBuf, PathBuf) {
        self.issue(
            "server",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }
}

fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_made_by_the_test() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert();
    let server = start(&format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}",
        quoted(&cert),
        quoted(&key)
    ));
    // A client that does not trust the CA is refused by its own TLS check.
    let untrusted = ConnectOptions::new()
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        untrusted.is_err(),
        "a certificate of an unknown CA must be refused"
    );
    // The server refuses plain connections.
    assert!(async_nats::connect(server.url()).await.is_err());
    let client = ConnectOptions::new()
        .add_root_certificates(ca.ca_file.clone())
        .require_tls(true)
        .connect(server.url())
        .await
        .unwrap();
    append_read_and_subscribe(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let ca = TestCa::new();
    let (cert, key) = ca.server_cert();
    let (client_cert, client_key) = ca.issue(
        "client",
        &["writer.example"],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    let server = start(&format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 5\n}}",
        quoted(&cert),
        quoted(&key),
        quoted(&ca.ca_file)
    ));
    // Trusting the server is not enough: the server wants a client certificate.
    let anonymous = ConnectOptions::new()
        .add_root_certificates(ca.ca_file.clone())
        .require_tls(true)
        .connect(server.url())
        .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate must be refused"
    );
    let client = ConnectOptions::new()
        .add_root_certificates(ca.ca_file.clone())
        .add_client_certificate(client_cert, client_key)
        .require_tls(true)
        .connect(server.url())
        .await
        .unwrap();
    append_read_and_subscribe(client).await;
}
