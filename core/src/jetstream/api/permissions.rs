//! Telling a permissions violation from a slow server.
//!
//! NATS drops a publish or a subscription the connection's user is not permitted, and reports
//! the violation only to the client's event callback (`async_nats::ConnectOptions::event_callback`)
//! and in the server log: to the code that sent the request it looks like a server that never
//! answers. So when a request is slow (no reply after [`SUSPECT_AFTER`]), the user's permissions
//! are asked for (`$SYS.REQ.USER.INFO`, answered by the server itself) while the request still
//! waits: if they refuse what the request needs, it fails at once with a message naming the
//! subject and the rule; if they cannot be read (the user may not ask for them either), the
//! request waits out its timeout, and the timeout's message names the likely cause.
//!
//! Nothing is asked on the fast path: a request answered within [`SUSPECT_AFTER`] costs nothing
//! more, and a user whose permissions are restricted does not get a violation logged for every
//! operation.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_nats::Client;
use serde::Deserialize;

use crate::jetstream::setup::{SetupError, SetupErrorKind};
use crate::subject::subject_matches;

/// How long a request may go unanswered before the user's permissions are asked for.
pub(crate) const SUSPECT_AFTER: Duration = Duration::from_secs(1);

/// How long the server may take to say what the user may do.
const USER_INFO_TIMEOUT: Duration = Duration::from_secs(2);

/// The server's own service that tells a connection who it is and what it may do.
pub(crate) const USER_INFO: &str = "$SYS.REQ.USER.INFO";

/// What a request needs the connection to be permitted.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Need<'a> {
    /// Publishing to this subject.
    Publish(&'a str),
    /// Subscribing to this subject (e.g. the inbox replies or deliveries arrive on).
    Subscribe(&'a str),
    /// Subscribing to the client's request inbox (`{inbox prefix}.{id}.*`), where the replies
    /// to `Client::request` arrive.
    ReplyInbox,
}

/// Allow and deny lists of one direction (publish or subscribe).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Rules {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

impl Rules {
    /// Why these rules refuse `subject`, if they do. As the server decides: a subject matching a
    /// deny rule is refused; with an allow list, a subject matching none of it is refused. A
    /// subscription subject's wildcards are taken as literal tokens, as the server does.
    fn refusal(&self, subject: &str) -> Option<String> {
        if let Some(rule) = self.deny.iter().find(|p| subject_matches(p, subject)) {
            return Some(format!("it matches the deny rule {rule:?}"));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|p| subject_matches(p, subject)) {
            return Some(format!(
                "it matches none of the allow rules {:?}",
                self.allow
            ));
        }
        None
    }
}

/// What the user may publish and subscribe to.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Permissions {
    #[serde(default)]
    publish: Option<Rules>,
    #[serde(default)]
    subscribe: Option<Rules>,
}

/// Who the connection is, as the server reports it.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct UserInfo {
    #[serde(default)]
    user: String,
    #[serde(default)]
    account: String,
    /// `None`: no restriction.
    #[serde(default)]
    permissions: Option<Permissions>,
}

#[derive(Debug, Deserialize)]
struct UserInfoResponse {
    #[serde(default)]
    data: Option<UserInfo>,
}

/// A request the server dropped because the connection's user is not permitted what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denied {
    /// The refused subject.
    pub(crate) subject: String,
    /// `publish to` or `subscribe to`.
    action: &'static str,
    /// The user and account.
    who: String,
    /// Which rule refuses it.
    why: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} may not {} {:?}: {} (the server drops what a user is not permitted and reports \
             it only to the client's event callback and in its log)",
            self.who, self.action, self.subject, self.why
        )
    }
}

impl std::error::Error for Denied {}

impl UserInfo {
    /// The first need these permissions refuse.
    pub(crate) fn refusal(&self, client: &Client, needs: &[Need<'_>]) -> Option<Denied> {
        let permissions = self.permissions.as_ref()?;
        let who = if self.user.is_empty() {
            format!("the connection's user (account {:?})", self.account)
        } else {
            format!("user {:?} (account {:?})", self.user, self.account)
        };
        for need in needs {
            let (action, rules, subject) = match need {
                Need::Publish(s) => ("publish to", &permissions.publish, (*s).to_owned()),
                Need::Subscribe(s) => ("subscribe to", &permissions.subscribe, (*s).to_owned()),
                Need::ReplyInbox => (
                    "subscribe to",
                    &permissions.subscribe,
                    format!("{}.*", client.new_inbox()),
                ),
            };
            if let Some(why) = rules.as_ref().and_then(|r| r.refusal(&subject)) {
                return Some(Denied {
                    subject,
                    action,
                    who,
                    why,
                });
            }
        }
        None
    }
}

/// Asks the server what the connection's user may do; `None` if it does not say in time (the
/// user may not be permitted to ask).
pub(crate) async fn user_info(client: &Client) -> Option<UserInfo> {
    let request = async_nats::Request::new().timeout(Some(USER_INFO_TIMEOUT));
    let reply = client
        .send_request(USER_INFO.to_owned(), request)
        .await
        .ok()?;
    serde_json::from_slice::<UserInfoResponse>(&reply.payload)
        .ok()?
        .data
}

/// Runs `request`; if it has not finished after [`SUSPECT_AFTER`], asks for the user's
/// permissions while it goes on waiting, and ends it with [`Denied`] if they refuse one of
/// `needs`. Otherwise returns the request's own outcome (its timeout included).
pub(crate) async fn unless_denied<F>(
    client: &Client,
    needs: &[Need<'_>],
    request: F,
) -> Result<F::Output, Denied>
where
    F: Future,
{
    let request = std::pin::pin!(request);
    guard(client, needs, request).await
}

/// How a request that has a timeout of its own ended.
#[derive(Debug)]
pub(crate) enum Waited<T> {
    /// It answered.
    Done(T),
    /// It had no answer after the timeout.
    TimedOut,
    /// The client reconnected while it waited: its reply (or the request itself) may have been
    /// lost with the old connection, so it may never come.
    Reconnected,
}

/// How often a waiting request looks whether the client reconnected meanwhile.
pub(crate) const RECONNECT_POLL: Duration = Duration::from_millis(50);

/// The client's connection generation: it grows by one with every (re)connection. A request
/// that sees it change while waiting has lost its reply if the server sent it on the old
/// connection.
pub(crate) fn epoch(client: &Client) -> u64 {
    client
        .statistics()
        .connects
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// [`unless_denied`] for a request without a timeout of its own: [`Waited::TimedOut`] when it
/// has no answer after `timeout`, [`Waited::Reconnected`] as soon as the client has reconnected
/// since `epoch` (the generation read before the request was sent). One timer serves the
/// suspicion, the reconnection check and the timeout, and it is only armed: a request answered
/// within [`RECONNECT_POLL`] never wakes it, which matters on the hot path (every append and
/// direct get).
pub(crate) async fn unless_denied_within<F>(
    client: &Client,
    needs: &[Need<'_>],
    timeout: Duration,
    epoch_before: u64,
    request: std::pin::Pin<&mut F>,
) -> Result<Waited<F::Output>, Denied>
where
    F: Future,
{
    let mut request = request;
    let now = tokio::time::Instant::now();
    let deadline = now + timeout;
    let suspect = now + SUSPECT_AFTER;
    let timer = tokio::time::sleep_until((now + RECONNECT_POLL).min(deadline));
    let mut timer = std::pin::pin!(timer);
    // Boxed and made only when needed: the slow path's future is not carried by every
    // request's.
    let mut info: Option<std::pin::Pin<Box<dyn Future<Output = Option<UserInfo>> + Send + '_>>> =
        None;
    let mut asked = false;
    loop {
        tokio::select! {
            biased;
            out = &mut request => return Ok(Waited::Done(out)),
            got = async { info.as_mut().expect("guarded by the condition").await }, if info.is_some() => {
                info = None;
                if let Some(denied) = got.and_then(|i| i.refusal(client, needs)) {
                    return Err(denied);
                }
            }
            () = &mut timer => {
                let now = tokio::time::Instant::now();
                if epoch(client) != epoch_before {
                    return Ok(Waited::Reconnected);
                }
                if now >= deadline {
                    return Ok(Waited::TimedOut);
                }
                if now >= suspect && !asked {
                    asked = true;
                    info = Some(Box::pin(user_info(client)));
                }
                timer.as_mut().reset((now + RECONNECT_POLL).min(deadline));
            }
        }
    }
}

/// Waits for `request`; after [`SUSPECT_AFTER`] asks for the user's permissions meanwhile and
/// ends with [`Denied`] if they refuse one of `needs`.
async fn guard<F>(
    client: &Client,
    needs: &[Need<'_>],
    mut request: std::pin::Pin<&mut F>,
) -> Result<F::Output, Denied>
where
    F: Future,
{
    tokio::select! {
        biased;
        out = &mut request => return Ok(out),
        () = tokio::time::sleep(SUSPECT_AFTER) => {}
    }
    if let Some(denied) = tokio::select! {
        biased;
        out = &mut request => return Ok(out),
        info = user_info(client) => info.and_then(|i| i.refusal(client, needs)),
    } {
        return Err(denied);
    }
    Ok(request.await)
}

/// What a request that got no reply most likely ran into: for the message of a timeout.
/// `waited`: the request's timeout, if known.
pub(crate) fn no_reply(subject: &str, waited: Option<Duration>) -> String {
    let waited = waited.map_or_else(|| "the request timeout".to_owned(), |d| format!("{d:?}"));
    format!(
        "no reply to {subject:?} within {waited}. Likely cause: the connection's user is not \
         permitted to publish to {subject:?} or to subscribe to its inbox (_INBOX.>) — the \
         server drops such a message and reports the violation only to the client's event \
         callback and in its log; otherwise the stream has no leader or the server is overloaded"
    )
}

/// Is `err`, or one of its causes, a request that got no reply in time?
pub(crate) fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<async_nats::RequestError>() {
            if matches!(r.kind(), async_nats::RequestErrorKind::TimedOut) {
                return true;
            }
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A store's set-up through the JetStream API on `subject`, which needs the connection to
/// publish there and to receive the replies: a refusal found in the user's permissions becomes
/// a [`SetupErrorKind::Server`] naming the subject, the user and the rule, and a set-up that
/// timed out says what most likely dropped its requests.
pub(crate) async fn setup_through<T>(
    client: &Client,
    subject: &str,
    setup: impl Future<Output = Result<T, SetupError>>,
) -> Result<T, SetupError> {
    match unless_denied(client, &[Need::Publish(subject), Need::ReplyInbox], setup).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) if matches!(e.kind(), SetupErrorKind::Connection) && is_timeout(&e) => Err(
            SetupError::with_source(SetupErrorKind::Connection, no_reply(subject, None)),
        ),
        Ok(Err(e)) => Err(e),
        Err(denied) => Err(SetupError::with_source(
            SetupErrorKind::PermissionDenied {
                subject: denied.subject.clone(),
            },
            denied,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn rules_decide_as_the_server_does() {
        let r = rules(&["$JS.API.>", "_INBOX.>"], &["$JS.API.CONSUMER.>"]);
        assert!(r.refusal("$JS.API.STREAM.INFO.S").is_none());
        assert!(r
            .refusal("$JS.API.CONSUMER.CREATE.S")
            .unwrap()
            .contains("deny rule \"$JS.API.CONSUMER.>\""));
        assert!(r
            .refusal("shop.order.placed.o1")
            .unwrap()
            .contains("none of the allow rules"));
        // Wildcards of a subscription are literal tokens: `_INBOX.*.*` allows the request
        // inbox `_INBOX.x.*` but not a delivery inbox `_INBOX.x`.
        let r = rules(&["_INBOX.*.*"], &[]);
        assert!(r.refusal("_INBOX.abc.*").is_none());
        assert!(r.refusal("_INBOX.abc").is_some());
        // Deny only: everything else is allowed.
        let r = rules(&[], &["shop.>"]);
        assert!(r.refusal("shop.order.placed.o1").is_some());
        assert!(r.refusal("$JS.API.INFO").is_none());
    }

    #[test]
    fn user_info_is_read_as_the_server_sends_it() {
        let json = br#"{"server":{"name":"n"},"data":{"user":"limited","account":"$G",
            "permissions":{"publish":{"allow":["$JS.API.>"],"deny":["shop.>"]},
            "subscribe":{"allow":["_INBOX.>"]},"responses":{"max":1,"ttl":0}}}}"#;
        let info = serde_json::from_slice::<UserInfoResponse>(json)
            .unwrap()
            .data
            .unwrap();
        assert_eq!(info.user, "limited");
        let p = info.permissions.unwrap();
        assert!(p.publish.unwrap().refusal("shop.a.b.c").is_some());
        assert!(p.subscribe.unwrap().refusal("_INBOX.x.*").is_none());
        // No permissions: unrestricted.
        let json = br#"{"data":{"user":"admin","account":"$G"}}"#;
        let info = serde_json::from_slice::<UserInfoResponse>(json)
            .unwrap()
            .data
            .unwrap();
        assert!(info.permissions.is_none());
    }
}
