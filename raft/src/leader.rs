//! Requests only the leader can serve (writes, linearizable read points,
//! membership changes): served here when this node leads, forwarded to the
//! leader otherwise, and tried again through an election until the request's
//! deadline, so a write sent to a healthy follower during a failover lands
//! on the new leader instead of waiting out its timeout.
//!
//! A write is never sent twice blindly: Tollgate has no request ids to
//! deduplicate a second copy, and a leader that fails after appending the
//! first may have replicated it to its successor, which then commits it. So
//! a write is addressed to one leader in one term (openraft refuses it
//! otherwise), and when that leader does not answer, this node waits until
//! it has applied an entry of a later term: by then the first copy either
//! was applied (its outcome is in this node's journal, see outcomes.rs) or
//! never will be, and only then is the write sent again.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::node::RaftNode;
use crate::outcomes::{self, Fate};
use crate::transport::wire::{LeaderTerm, PeerRequest, PeerResponse, WriteRejection};
use crate::transport::{CallError, MembershipOp};
use crate::types::{Command, CommandResponse};

/// An attempt the leader may have acted on without answering.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub leader: LeaderTerm,
    /// What this node had applied, or the highest revision any of its
    /// writes was answered with, whichever is later, read before the attempt
    /// (`RaftNode::written_after`): a copy of the request can only be in the
    /// log after it.
    pub applied_before: u64,
    pub why: String,
}

/// A request only the leader serves.
pub(crate) trait LeaderRequest: Sync {
    type Output: Send;
    /// Serves it on this node, as the `leader` it believes it is.
    fn here(
        &self,
        node: &RaftNode,
        leader: LeaderTerm,
    ) -> impl Future<Output = Result<Self::Output, WriteRejection>> + Send;
    /// The same request, for the leader.
    fn to_peer(&self, leader: LeaderTerm) -> PeerRequest;
    /// For a leader of the previous version, which refused `to_peer`'s request.
    fn to_old_peer(&self) -> Option<PeerRequest> {
        None
    }
    /// The leader's answer, or `None` when it answered something else.
    fn from_peer(response: PeerResponse) -> Option<Result<Self::Output, WriteRejection>>;
    /// What became of an attempt the leader may have acted on.
    fn settle(&self, node: &RaftNode, sent: Sent, deadline: Instant)
    -> impl Future<Output = Step<Self::Output>> + Send;
}

pub(crate) struct Write<'a>(pub &'a Command);

impl LeaderRequest for Write<'_> {
    type Output = CommandResponse;
    fn here(
        &self,
        node: &RaftNode,
        leader: LeaderTerm,
    ) -> impl Future<Output = Result<CommandResponse, WriteRejection>> + Send {
        node.write_here(self.0.clone(), Some(leader))
    }
    fn to_peer(&self, leader: LeaderTerm) -> PeerRequest {
        PeerRequest::WriteAt { command: Box::new(self.0.clone()), leader }
    }
    fn to_old_peer(&self) -> Option<PeerRequest> {
        Some(PeerRequest::Write(Box::new(self.0.clone())))
    }
    fn from_peer(response: PeerResponse) -> Option<Result<CommandResponse, WriteRejection>> {
        match response {
            PeerResponse::Write(result) => Some(result),
            _ => None,
        }
    }
    async fn settle(&self, node: &RaftNode, sent: Sent, deadline: Instant) -> Step<CommandResponse> {
        let fingerprint = outcomes::fingerprint(self.0);
        let mut states = node.subscribe();
        loop {
            match node.outcomes().fate(&fingerprint, sent.applied_before, sent.leader.term) {
                Fate::Applied(response) => {
                    tracing::debug!(why = %sent.why, "a write without an answer was found committed");
                    return Step::Done(response);
                }
                Fate::Lost => return Step::Retry(format!("{}; it was not committed, so it is sent again", sent.why)),
                Fate::Unknowable => {
                    return Step::Stop(LeaderError::Unknown { leader: sent.leader.node, why: sent.why });
                }
                Fate::Pending => {}
            }
            // Every applied batch publishes a new state.
            match tokio::time::timeout_at(deadline, states.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Step::Stop(LeaderError::Failed("the state machine stopped".into())),
                Err(_) => return Step::Stop(LeaderError::Deadline { last: Some(sent.why), maybe_applied: true }),
            }
        }
    }
}

pub(crate) struct ReadIndex;

impl LeaderRequest for ReadIndex {
    type Output = u64;
    fn here(&self, node: &RaftNode, _: LeaderTerm) -> impl Future<Output = Result<u64, WriteRejection>> + Send {
        node.local_read_index()
    }
    fn to_peer(&self, _: LeaderTerm) -> PeerRequest {
        PeerRequest::ReadIndex
    }
    fn from_peer(response: PeerResponse) -> Option<Result<u64, WriteRejection>> {
        match response {
            PeerResponse::ReadIndex(result) => Some(result),
            _ => None,
        }
    }
    /// Asking for a read point twice is harmless.
    async fn settle(&self, _: &RaftNode, sent: Sent, _: Instant) -> Step<u64> {
        Step::Retry(sent.why)
    }
}

pub(crate) struct Membership<'a>(pub &'a MembershipOp);

impl LeaderRequest for Membership<'_> {
    type Output = u64;
    fn here(&self, node: &RaftNode, _: LeaderTerm) -> impl Future<Output = Result<u64, WriteRejection>> + Send {
        node.change_membership_here(self.0.clone())
    }
    fn to_peer(&self, _: LeaderTerm) -> PeerRequest {
        PeerRequest::Membership(self.0.clone())
    }
    fn from_peer(response: PeerResponse) -> Option<Result<u64, WriteRejection>> {
        match response {
            PeerResponse::Membership(result) => Some(result),
            _ => None,
        }
    }
    /// Membership entries are not in the journal, and removing a node twice
    /// fails the second time: the operator checks the status instead.
    async fn settle(&self, _: &RaftNode, sent: Sent, _: Instant) -> Step<u64> {
        Step::Stop(LeaderError::Unknown { leader: sent.leader.node, why: sent.why })
    }
}

/// Why a request through the leader did not succeed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaderError {
    /// The leader (possibly this node) refused or failed it.
    #[error("{0}")]
    Failed(String),
    /// The leader may have acted on it, and whether it did cannot be known.
    #[error("{why}")]
    Unknown { leader: u64, why: String },
    /// The deadline passed first. `maybe_applied` is false when every attempt
    /// was refused, never reached a leader, or was found not committed.
    #[error("no leader served the request in time{}", .last.as_ref().map(|l| format!(" (last attempt: {l})")).unwrap_or_default())]
    Deadline { last: Option<String>, maybe_applied: bool },
}

/// How one attempt ended.
#[derive(Debug)]
pub(crate) enum Step<T> {
    Done(T),
    /// Not served and certainly not acted on: try again shortly.
    Retry(String),
    Stop(LeaderError),
}

/// Serves `request` through whoever leads, until `deadline`. Boxed: the
/// retry, forward and QUIC futures nested inside an admin call's future
/// otherwise exceed the compiler's layout depth limit.
pub(crate) fn via_leader<'a, R: LeaderRequest>(
    node: &'a RaftNode,
    request: &'a R,
    deadline: Instant,
) -> Pin<Box<dyn Future<Output = Result<R::Output, LeaderError>> + Send + 'a>> {
    Box::pin(retry_until(deadline, move || attempt(node, request, deadline)))
}

/// Runs attempts until one ends the request, pausing briefly between them
/// (an election takes a few hundred milliseconds; asking faster only adds load).
pub(crate) async fn retry_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, LeaderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step<T>>,
{
    let mut pause = Duration::from_millis(25);
    loop {
        let why = match attempt().await {
            Step::Done(output) => return Ok(output),
            Step::Stop(error) => return Err(error),
            Step::Retry(why) => why,
        };
        tracing::debug!(%why, "retrying a request through the leader");
        let wake = Instant::now() + pause;
        if wake >= deadline {
            return Err(LeaderError::Deadline { last: Some(why), maybe_applied: false });
        }
        tokio::time::sleep_until(wake).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

async fn attempt<R: LeaderRequest>(node: &RaftNode, request: &R, deadline: Instant) -> Step<R::Output> {
    let Some((leader, addr)) = node.known_leader() else {
        return Step::Retry("no leader is known yet (an election is under way)".into());
    };
    // Not only what this node has applied: a write answered by the leader
    // may not be applied here yet (`RaftNode::propose_for_answer`).
    let applied_before = node.written_after();
    if leader.node != node.node_id() {
        return forward(node, request, Sent { leader, applied_before, why: String::new() }, &addr, deadline).await;
    }
    let sent =
        Sent { leader, applied_before, why: format!("node {} (this node) did not commit it in time", leader.node) };
    match tokio::time::timeout_at(deadline, request.here(node, leader)).await {
        Ok(answer) => answered(node, request, answer, sent, deadline).await,
        // In this node's log, not committed yet.
        Err(_) => request.settle(node, sent, deadline).await,
    }
}

/// Sends the request to `sent.leader` at `addr`; stops waiting for the
/// answer when this node sees another leader.
async fn forward<R: LeaderRequest>(
    node: &RaftNode,
    request: &R,
    sent: Sent,
    addr: &str,
    deadline: Instant,
) -> Step<R::Output> {
    let leader = sent.leader.node;
    let call = |peer_request: PeerRequest| async move {
        let timeout = deadline.saturating_duration_since(Instant::now());
        node.transport().call_once(addr, &peer_request, timeout, node.leader_changed_from(leader)).await
    };
    let mut response = call(request.to_peer(sent.leader)).await;
    // A leader of the previous version cannot decode the new request and
    // refused it; it gets the old one, without the term condition (so a lost
    // answer is settled against the term this node knew, during an upgrade only).
    if let (Ok(PeerResponse::Refused(_)), Some(old)) = (&response, request.to_old_peer()) {
        response = call(old).await;
    }
    match response {
        Ok(response) => match R::from_peer(response) {
            Some(answer) => answered(node, request, answer, sent, deadline).await,
            None => Step::Stop(LeaderError::Failed(format!("node {leader} answered with an unexpected message"))),
        },
        Err(error @ CallError::NotSent(_)) => Step::Retry(format!("cannot reach the leader (node {leader}): {error}")),
        Err(error) => {
            let why = format!("the leader (node {leader}) received the request and did not answer ({error})");
            request.settle(node, Sent { why, ..sent }, deadline).await
        }
    }
}

/// What one answer (this node's, or the leader's) means for the request.
async fn answered<R: LeaderRequest>(
    node: &RaftNode,
    request: &R,
    answer: Result<R::Output, WriteRejection>,
    sent: Sent,
    deadline: Instant,
) -> Step<R::Output> {
    match answer {
        Ok(output) => Step::Done(output),
        Err(WriteRejection::NotLeader { .. }) => Step::Retry(format!("node {} is not the leader", sent.leader.node)),
        Err(WriteRejection::Failed(reason)) => Step::Stop(LeaderError::Failed(reason)),
        Err(WriteRejection::Unknown(why)) => request.settle(node, Sent { why, ..sent }, deadline).await,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn retries_until_an_attempt_succeeds() {
        let attempts = Cell::new(0);
        let deadline = Instant::now() + Duration::from_secs(4);
        let result = retry_until(deadline, || {
            attempts.set(attempts.get() + 1);
            let n = attempts.get();
            async move { if n < 5 { Step::Retry(format!("no leader yet ({n})")) } else { Step::Done(n) } }
        })
        .await;
        assert_eq!(result.unwrap(), 5);
    }

    #[tokio::test]
    async fn stops_at_the_deadline_with_the_last_reason_and_nothing_applied() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let attempts = Cell::new(0u32);
        let result: Result<(), _> = retry_until(deadline, || {
            attempts.set(attempts.get() + 1);
            async { Step::Retry("cannot reach the leader (node 1)".into()) }
        })
        .await;
        match result {
            Err(LeaderError::Deadline { last, maybe_applied }) => {
                assert_eq!(last.as_deref(), Some("cannot reach the leader (node 1)"));
                assert!(!maybe_applied, "every attempt was refused");
            }
            other => panic!("expected the deadline, got {other:?}"),
        }
        assert!(attempts.get() > 1, "retried before giving up");
    }

    #[tokio::test]
    async fn a_final_answer_is_not_retried() {
        let attempts = Cell::new(0);
        let deadline = Instant::now() + Duration::from_secs(4);
        let result: Result<(), _> = retry_until(deadline, || {
            attempts.set(attempts.get() + 1);
            async { Step::Stop(LeaderError::Failed("node 5 is not a voter; promote it first".into())) }
        })
        .await;
        assert!(matches!(result, Err(LeaderError::Failed(_))));
        assert_eq!(attempts.get(), 1);
    }
}
