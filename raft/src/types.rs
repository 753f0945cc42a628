use std::fmt;

use prost::Message;
use serde::{Deserialize, Serialize};
use tollgate_proto::raft::v1 as pb;

use crate::error::ApplyError;

openraft::declare_raft_types!(
    /// Tollgate's Raft types: node ids are u64, the payload is a gateway [`Command`].
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        Node = openraft::BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;

/// A Raft log payload. It travels and is stored as protobuf bytes, so a node
/// of the next version can still read a log written by this one.
#[derive(Clone, PartialEq, Default)]
pub struct Command(pub pb::Command);

impl Command {
    pub fn new(op: pb::command::Op, proposed_at_ms: i64, actor: impl Into<String>) -> Command {
        Command(pb::Command { proposed_at_ms, actor: actor.into(), op: Some(op), ..Default::default() })
    }

    /// A short, secret-free description for logs and the audit trail.
    pub fn summary(&self) -> String {
        self.0.op.as_ref().map_or_else(|| "empty".to_string(), crate::entities::summarize)
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug goes to logs: print the summary, never the payload (key hashes etc.).
        write!(f, "Command({})", self.summary())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0.encode_to_vec())
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BytesVisitor;
        impl<'de> serde::de::Visitor<'de> for BytesVisitor {
            type Value = Command;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("protobuf-encoded tollgate.raft.v1.Command bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Command, E> {
                pb::Command::decode(v).map(Command).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Command, E> {
                self.visit_bytes(&v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
                // Self-describing formats such as JSON carry bytes as a sequence of numbers.
                let mut buf = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    buf.push(b);
                }
                self.visit_bytes(&buf)
            }
        }
        deserializer.deserialize_bytes(BytesVisitor)
    }
}

/// What applying one command produced: the log index and, for creates and
/// updates, the entity as stored (protobuf bytes, decoded by the caller who
/// knows which kind it asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub revision: u64,
    pub entity: Option<Vec<u8>>,
}

/// The state machine's answer to a command. A rejected command is a normal,
/// replicated outcome (every node rejects it the same way), not a storage error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse(pub Result<Applied, ApplyError>);
