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
        Command(pb::Command { proposed_at_ms, actor: actor.into(), op: Some(op) })
    }

    /// A short, secret-free description for logs and the audit trail.
    pub fn summary(&self) -> String {
        use pb::command::Op;
        match &self.0.op {
            None => "empty".to_string(),
            Some(Op::CreateService(s)) => format!("create service {}", s.name),
            Some(Op::UpdateService(s)) => format!("update service {}", s.name),
            Some(Op::DeleteService(id)) => format!("delete service {id}"),
            Some(Op::CreateRoute(r)) => format!("create route {}", r.name),
            Some(Op::UpdateRoute(r)) => format!("update route {}", r.name),
            Some(Op::DeleteRoute(id)) => format!("delete route {id}"),
            Some(Op::CreateConsumer(c)) => format!("create consumer {}", c.name),
            Some(Op::UpdateConsumer(c)) => format!("update consumer {}", c.name),
            Some(Op::DeleteConsumer(id)) => format!("delete consumer {id}"),
            Some(Op::CreateApiKey(k)) => {
                format!("create api key {} for {}", k.meta.as_ref().map_or("", |m| m.id.as_str()), k.consumer_id)
            }
            Some(Op::UpdateApiKey(k)) => format!("update api key {}", k.meta.as_ref().map_or("", |m| m.id.as_str())),
            Some(Op::DeleteApiKey(id)) => format!("delete api key {id}"),
            Some(Op::DeleteJoinToken(id)) => format!("delete join token {id}"),
            Some(Op::CreateJoinToken(t)) => {
                format!("create join token {}", t.meta.as_ref().map_or("", |m| m.id.as_str()))
            }
            Some(Op::CreateProvider(p)) => format!("create provider {}", p.name),
            Some(Op::UpdateProvider(p)) => format!("update provider {}", p.name),
            Some(Op::DeleteProvider(id)) => format!("delete provider {id}"),
            Some(Op::CreateModelAlias(a)) => format!("create model alias {}", a.name),
            Some(Op::UpdateModelAlias(a)) => format!("update model alias {}", a.name),
            Some(Op::DeleteModelAlias(id)) => format!("delete model alias {id}"),
            Some(Op::PutModelPrice(p)) => format!("set model price {}", p.name),
            Some(Op::DeleteModelPrice(id)) => format!("delete model price {id}"),
        }
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
