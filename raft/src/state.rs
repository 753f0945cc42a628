use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tollgate_proto::config::v1::{ApiKey, Consumer, JoinToken, ModelAlias, ModelPrice, Provider, Route, Service};
use tollgate_storage::{Cf, Engine};

use crate::apply::Change;
use crate::error::{EntityKind, RaftNodeError};
use crate::keys;

/// The whole replicated gateway configuration, in memory.
///
/// Cloning is cheap (maps of `Arc`s), which is what lets the state machine
/// publish an immutable copy to the data plane after every applied batch while
/// it keeps applying.
#[derive(Debug, Clone, Default)]
pub struct GatewayState {
    applied_index: u64,
    services: Table<Service>,
    routes: Table<Route>,
    consumers: Table<Consumer>,
    api_keys: Table<ApiKey>,
    join_tokens: Table<JoinToken>,
    providers: Table<Provider>,
    model_aliases: Table<ModelAlias>,
    model_prices: Table<ModelPrice>,
}

/// Entities by id, plus the unique-name index.
#[derive(Debug, Clone)]
struct Table<T> {
    by_id: BTreeMap<String, Arc<T>>,
    id_by_name: BTreeMap<String, String>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { by_id: BTreeMap::new(), id_by_name: BTreeMap::new() }
    }
}

impl<T: Entity> Table<T> {
    fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.by_id.get(id)
    }

    fn find(&self, id_or_name: &str) -> Option<&Arc<T>> {
        self.by_id.get(id_or_name).or_else(|| self.by_id.get(self.id_by_name.get(id_or_name)?))
    }

    fn id_of_name(&self, name: &str) -> Option<&str> {
        self.id_by_name.get(name).map(String::as_str)
    }

    fn put(&mut self, entity: T) {
        let id = entity.id().to_string();
        if let Some(old) = self.by_id.get(&id)
            && let Some(name) = old.name()
        {
            self.id_by_name.remove(name);
        }
        if let Some(name) = entity.name() {
            self.id_by_name.insert(name.to_string(), id.clone());
        }
        self.by_id.insert(id, Arc::new(entity));
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id)
            && let Some(name) = old.name()
        {
            self.id_by_name.remove(name);
        }
    }
}

/// What the state needs to know about each entity type.
pub(crate) trait Entity: Message + Default + Sized {
    const KIND: EntityKind;
    fn id(&self) -> &str;
    /// The unique name, for kinds that have one.
    fn name(&self) -> Option<&str>;
}

macro_rules! entity {
    ($ty:ty, $kind:expr, named) => {
        impl Entity for $ty {
            const KIND: EntityKind = $kind;
            fn id(&self) -> &str {
                self.meta.as_ref().map_or("", |m| m.id.as_str())
            }
            fn name(&self) -> Option<&str> {
                Some(&self.name)
            }
        }
    };
    ($ty:ty, $kind:expr, unnamed) => {
        impl Entity for $ty {
            const KIND: EntityKind = $kind;
            fn id(&self) -> &str {
                self.meta.as_ref().map_or("", |m| m.id.as_str())
            }
            fn name(&self) -> Option<&str> {
                None
            }
        }
    };
}
entity!(Service, EntityKind::Service, named);
entity!(Route, EntityKind::Route, named);
entity!(Consumer, EntityKind::Consumer, named);
// Key labels need not be unique; keys are addressed by id.
entity!(ApiKey, EntityKind::ApiKey, unnamed);
entity!(JoinToken, EntityKind::JoinToken, unnamed);
entity!(Provider, EntityKind::Provider, named);
entity!(ModelAlias, EntityKind::ModelAlias, named);
entity!(ModelPrice, EntityKind::ModelPrice, named);

impl GatewayState {
    /// The Raft log index of the last command reflected in this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    pub(crate) fn set_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }

    pub fn service(&self, id: &str) -> Option<&Arc<Service>> {
        self.services.get(id)
    }
    pub fn route(&self, id: &str) -> Option<&Arc<Route>> {
        self.routes.get(id)
    }
    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(id)
    }
    pub fn api_key(&self, id: &str) -> Option<&Arc<ApiKey>> {
        self.api_keys.get(id)
    }
    pub fn join_token(&self, id: &str) -> Option<&Arc<JoinToken>> {
        self.join_tokens.get(id)
    }
    pub fn provider(&self, id: &str) -> Option<&Arc<Provider>> {
        self.providers.get(id)
    }
    pub fn model_alias(&self, id: &str) -> Option<&Arc<ModelAlias>> {
        self.model_aliases.get(id)
    }
    pub fn model_price(&self, id: &str) -> Option<&Arc<ModelPrice>> {
        self.model_prices.get(id)
    }
    pub fn find_provider(&self, id_or_name: &str) -> Option<&Arc<Provider>> {
        self.providers.find(id_or_name)
    }
    pub fn find_model_alias(&self, id_or_name: &str) -> Option<&Arc<ModelAlias>> {
        self.model_aliases.find(id_or_name)
    }
    pub fn find_model_price(&self, id_or_name: &str) -> Option<&Arc<ModelPrice>> {
        self.model_prices.find(id_or_name)
    }
    pub fn providers(&self) -> impl Iterator<Item = &Arc<Provider>> {
        self.providers.by_id.values()
    }
    pub fn model_aliases(&self) -> impl Iterator<Item = &Arc<ModelAlias>> {
        self.model_aliases.by_id.values()
    }
    pub fn model_prices(&self) -> impl Iterator<Item = &Arc<ModelPrice>> {
        self.model_prices.by_id.values()
    }
    pub(crate) fn provider_id_named(&self, name: &str) -> Option<&str> {
        self.providers.id_of_name(name)
    }
    pub(crate) fn model_alias_id_named(&self, name: &str) -> Option<&str> {
        self.model_aliases.id_of_name(name)
    }
    pub(crate) fn model_price_id_named(&self, name: &str) -> Option<&str> {
        self.model_prices.id_of_name(name)
    }

    /// Looks up by id first, then by unique name.
    pub fn find_service(&self, id_or_name: &str) -> Option<&Arc<Service>> {
        self.services.find(id_or_name)
    }
    pub fn find_route(&self, id_or_name: &str) -> Option<&Arc<Route>> {
        self.routes.find(id_or_name)
    }
    pub fn find_consumer(&self, id_or_name: &str) -> Option<&Arc<Consumer>> {
        self.consumers.find(id_or_name)
    }

    pub(crate) fn service_id_named(&self, name: &str) -> Option<&str> {
        self.services.id_of_name(name)
    }
    pub(crate) fn route_id_named(&self, name: &str) -> Option<&str> {
        self.routes.id_of_name(name)
    }
    pub(crate) fn consumer_id_named(&self, name: &str) -> Option<&str> {
        self.consumers.id_of_name(name)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.by_id.values()
    }
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.by_id.values()
    }
    pub fn consumers(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.consumers.by_id.values()
    }
    pub fn join_tokens(&self) -> impl Iterator<Item = &Arc<JoinToken>> {
        self.join_tokens.by_id.values()
    }
    pub fn api_keys(&self) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.api_keys.by_id.values()
    }

    pub(crate) fn commit(&mut self, change: &Change) {
        match change {
            Change::PutService(s) => self.services.put(s.clone()),
            Change::DeleteService(id) => self.services.remove(id),
            Change::PutRoute(r) => self.routes.put(r.clone()),
            Change::DeleteRoute(id) => self.routes.remove(id),
            Change::PutConsumer(c) => self.consumers.put(c.clone()),
            Change::DeleteConsumer(id) => self.consumers.remove(id),
            Change::PutApiKey(k) => self.api_keys.put(k.clone()),
            Change::DeleteApiKey(id) => self.api_keys.remove(id),
            Change::PutJoinToken(t) => self.join_tokens.put(t.clone()),
            Change::DeleteJoinToken(id) => self.join_tokens.remove(id),
            Change::PutProvider(p) => self.providers.put(p.clone()),
            Change::DeleteProvider(id) => self.providers.remove(id),
            Change::PutModelAlias(a) => self.model_aliases.put(a.clone()),
            Change::DeleteModelAlias(id) => self.model_aliases.remove(id),
            Change::PutModelPrice(p) => self.model_prices.put(p.clone()),
            Change::DeleteModelPrice(id) => self.model_prices.remove(id),
        }
    }

    /// Every entity as the `(key, value)` pairs of the `state` column family,
    /// in key order: the snapshot format, and what two replicas must agree on.
    pub fn encoded_entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        fn encode<T: Entity>(table: &Table<T>, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
            for (id, e) in &table.by_id {
                out.push((keys::entity_key(T::KIND, id), e.encode_to_vec()));
            }
        }
        let mut out = Vec::new();
        encode(&self.api_keys, &mut out);
        encode(&self.consumers, &mut out);
        encode(&self.routes, &mut out);
        encode(&self.services, &mut out);
        encode(&self.join_tokens, &mut out);
        encode(&self.providers, &mut out);
        encode(&self.model_aliases, &mut out);
        encode(&self.model_prices, &mut out);
        out.sort();
        out
    }

    /// Rebuilds the in-memory state from the `state` column family.
    pub fn load(engine: &Engine, applied_index: u64) -> Result<GatewayState, RaftNodeError> {
        let mut state = GatewayState { applied_index, ..Default::default() };
        for (key, value) in engine.scan_prefix(Cf::State, b"")? {
            state.insert_encoded(&key, &value)?;
        }
        Ok(state)
    }

    /// Adds one `state` family record; used by `load` and snapshot install.
    pub(crate) fn insert_encoded(&mut self, key: &[u8], value: &[u8]) -> Result<(), RaftNodeError> {
        fn decode<T: Entity>(value: &[u8]) -> Result<T, RaftNodeError> {
            T::decode(value).map_err(|e| RaftNodeError::Corrupt { what: "entity", detail: e.to_string() })
        }
        if key.starts_with(keys::entity_prefix(EntityKind::Service)) {
            self.services.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::Route)) {
            // A route stored by the previous version names its backend in
            // the legacy fields; hold it in the current form. It was valid
            // when stored, so both legacy fields are never set.
            let mut route: Route = decode(value)?;
            route.adopt_legacy_backend().map_err(|e| RaftNodeError::Corrupt { what: "route", detail: e.into() })?;
            self.routes.put(route);
        } else if key.starts_with(keys::entity_prefix(EntityKind::Consumer)) {
            self.consumers.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::ApiKey)) {
            self.api_keys.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::JoinToken)) {
            self.join_tokens.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::Provider)) {
            self.providers.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::ModelAlias)) {
            self.model_aliases.put(decode(value)?);
        } else if key.starts_with(keys::entity_prefix(EntityKind::ModelPrice)) {
            self.model_prices.put(decode(value)?);
        } else {
            return Err(RaftNodeError::Corrupt {
                what: "state key",
                detail: format!("unknown key {:?}", String::from_utf8_lossy(key)),
            });
        }
        Ok(())
    }
}
