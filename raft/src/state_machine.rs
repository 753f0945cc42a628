//! openraft's state machine over the `state` family of a storage engine, with
//! the gateway state kept in memory and published to the data plane after
//! each batch. Nodes run it on RocksDB; tests may run it in memory.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::watch;
use tollgate_storage::{Batch, Cf, Durability, Engine, KvEngine};

use crate::apply::apply;
use crate::error::RaftNodeError;
use crate::keys;
use crate::log_store::{decode, encode};
use crate::outcomes::Outcomes;
use crate::snapshot_file;
use crate::state::GatewayState;
use crate::types::{Applied, CommandResponse, TypeConfig};

/// Snapshots kept on disk: the current one, and the previous one in case a
/// follower is still streaming it.
const SNAPSHOTS_KEPT: usize = 2;

pub struct StateMachine<E: KvEngine = Engine> {
    engine: E,
    snapshot_dir: PathBuf,
    state: GatewayState,
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    publish: watch::Sender<Arc<GatewayState>>,
    outcomes: Arc<Outcomes>,
}

impl<E: KvEngine> StateMachine<E> {
    /// Loads the applied state from `engine`. The receiver sees a new
    /// [`GatewayState`] after every applied batch; it never blocks the state machine.
    pub fn open(
        engine: E,
        snapshot_dir: PathBuf,
    ) -> Result<(StateMachine<E>, watch::Receiver<Arc<GatewayState>>), RaftNodeError> {
        let meta = |key: &[u8]| engine.get(Cf::RaftMeta, key);
        let corrupt = |what| move |e: io::Error| RaftNodeError::Corrupt { what, detail: e.to_string() };
        let last_applied: Option<LogIdOf<TypeConfig>> =
            meta(keys::SM_APPLIED)?.map(|b| decode(&b)).transpose().map_err(corrupt("last applied log id"))?;
        let membership: StoredMembershipOf<TypeConfig> = meta(keys::SM_MEMBERSHIP)?
            .map(|b| decode(&b))
            .transpose()
            .map_err(corrupt("membership"))?
            .unwrap_or_default();
        let state = GatewayState::load(&engine, last_applied.as_ref().map_or(0, |l| l.index()))?;
        let (publish, receiver) = watch::channel(Arc::new(state.clone()));
        let outcomes = Arc::new(Outcomes::new(index_of(&last_applied), term_of(&last_applied)));
        Ok((StateMachine { engine, snapshot_dir, state, last_applied, membership, publish, outcomes }, receiver))
    }

    /// The outcomes of the last commands applied, for writes whose leader
    /// failed before answering.
    pub(crate) fn outcomes(&self) -> Arc<Outcomes> {
        self.outcomes.clone()
    }

    /// O(1): the copy shares every table and the journal with `self.state`.
    fn publish(&mut self) {
        self.state.set_applied_index(self.last_applied.as_ref().map_or(0, |l| l.index()));
        self.publish.send_replace(Arc::new(self.state.clone()));
    }
}

fn index_of(log_id: &Option<LogIdOf<TypeConfig>>) -> u64 {
    log_id.as_ref().map_or(0, |l| l.index)
}

fn term_of(log_id: &Option<LogIdOf<TypeConfig>>) -> u64 {
    log_id.as_ref().map_or(0, |l| l.leader_id.term)
}

impl<E: KvEngine> RaftStateMachine<TypeConfig> for StateMachine<E> {
    type SnapshotData = File;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Batch::default();
        let mut responses = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let index = entry.index();
            let response = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                    None
                }
                EntryPayload::Normal(cmd) => Some(match apply(&self.state, &cmd.0, index) {
                    Ok(outcome) => {
                        for change in &outcome.changes {
                            change.stage(&mut batch);
                            self.state.commit(change, index);
                        }
                        CommandResponse(Ok(Applied { revision: index, entity: outcome.entity }))
                    }
                    Err(rejected) => {
                        tracing::debug!(index, command = %cmd, %rejected, "command rejected");
                        CommandResponse(Err(rejected))
                    }
                }),
            };
            self.last_applied = Some(entry.log_id());
            let command = match (&entry.payload, &response) {
                (EntryPayload::Normal(cmd), Some(response)) => Some((cmd, response)),
                _ => None,
            };
            self.outcomes.applied(index, entry.log_id().leader_id.term, command);
            if let Some(responder) = responder {
                responses.push((
                    responder,
                    response.unwrap_or(CommandResponse(Ok(Applied { revision: index, entity: None }))),
                ));
            }
        }
        if let Some(applied) = &self.last_applied {
            batch.put(Cf::RaftMeta, keys::SM_APPLIED, &encode(applied)?);
            batch.put(Cf::RaftMeta, keys::SM_MEMBERSHIP, &encode(&self.membership)?);
        }
        // The log is already durable, so a lost apply is replayed after a crash;
        // no fsync needed here. State and applied index move together atomically.
        self.engine.write(batch, Durability::Process).map_err(io::Error::other)?;
        self.publish();
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // O(1), like `publish`.
        SnapshotBuilder {
            state: self.state.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            dir: self.snapshot_dir.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: File) -> io::Result<()> {
        let dir = self.snapshot_dir.clone();
        let meta_owned = meta.clone();
        let (state, entries) = tokio::task::spawn_blocking(move || -> io::Result<_> {
            // The journal starts over: readers from before the snapshot rebuild.
            let mut state = GatewayState::empty_at(index_of(&meta_owned.last_log_id));
            let mut entries = Vec::new();
            let file_meta = snapshot_file::read_all(snapshot, |k, v| {
                state.insert_encoded(&k, &v).map_err(io::Error::other)?;
                entries.push((k, v));
                Ok(())
            })?;
            if file_meta != meta_owned {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot file does not match its metadata"));
            }
            // Keep our own copy so this node can serve the snapshot onwards.
            snapshot_file::write(&dir, &meta_owned, &entries)?;
            Ok((state, entries))
        })
        .await??;

        let mut batch = Batch::default();
        // Entity keys are ASCII, so [0x00, 0xff) covers the whole family.
        batch.delete_range(Cf::State, &[0x00], &[0xff]);
        for (k, v) in &entries {
            batch.put(Cf::State, k, v);
        }
        batch.put(Cf::RaftMeta, keys::SM_APPLIED, &encode(&meta.last_log_id)?);
        batch.put(Cf::RaftMeta, keys::SM_MEMBERSHIP, &encode(&meta.last_membership)?);
        self.engine.write(batch, Durability::Machine).map_err(io::Error::other)?;

        self.state = state;
        self.outcomes.reset(index_of(&meta.last_log_id), term_of(&meta.last_log_id));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.publish();
        snapshot_file::prune(&self.snapshot_dir, SNAPSHOTS_KEPT)
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<TypeConfig, File>>> {
        let Some(path) = snapshot_file::newest(&self.snapshot_dir)? else {
            return Ok(None);
        };
        let mut file = File::open(&path)?;
        let meta = snapshot_file::read_meta(&mut file)?;
        // Hand out the file from its start; readers parse the header themselves.
        Ok(Some(SnapshotOf::<TypeConfig, File> { meta, snapshot: File::open(&path)? }))
    }
}

/// Writes a snapshot from a copy of the in-memory state taken at a batch
/// boundary, so it is consistent without pausing `apply`.
pub struct SnapshotBuilder {
    state: GatewayState,
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    dir: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = File;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, File>> {
        let meta =
            SnapshotMetaOf::<TypeConfig> { last_log_id: self.last_applied, last_membership: self.membership.clone() };
        let state = self.state.clone();
        let dir = self.dir.clone();
        let meta_for_file = meta.clone();
        // Encoding is O(state): off the async runtime, with the file I/O.
        let path = tokio::task::spawn_blocking(move || {
            let entries = state.encoded_entries();
            let path = snapshot_file::write(&dir, &meta_for_file, &entries)?;
            snapshot_file::prune(&dir, SNAPSHOTS_KEPT)?;
            Ok::<_, io::Error>(path)
        })
        .await??;
        Ok(SnapshotOf::<TypeConfig, File> { meta, snapshot: File::open(path)? })
    }
}
