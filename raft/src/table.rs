//! The entities of one kind, by id, with the unique-name index.
//!
//! Both maps are persistent (`imbl`): a clone shares every node with the
//! original and a put or remove copies only the O(log n) nodes on its path.
//! The state machine publishes a copy of the whole state after every applied
//! batch, so this is what makes a write cost what it changes.

use std::sync::Arc;

use imbl::OrdMap;
use tollgate_storage::KeyValue;

use crate::keys;
use crate::registry::Entity;

#[derive(Debug, Clone)]
pub(crate) struct Table<T> {
    by_id: OrdMap<Arc<str>, Arc<T>>,
    /// Only for kinds with a unique name.
    id_by_name: OrdMap<Arc<str>, Arc<str>>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table { by_id: OrdMap::new(), id_by_name: OrdMap::new() }
    }
}

impl<T: Entity> Table<T> {
    pub(crate) fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.by_id.get(id)
    }

    /// By id first, then by unique name.
    pub(crate) fn find(&self, id_or_name: &str) -> Option<&Arc<T>> {
        self.by_id.get(id_or_name).or_else(|| self.by_id.get(self.id_by_name.get(id_or_name)?.as_ref()))
    }

    pub(crate) fn id_of_name(&self, name: &str) -> Option<&str> {
        self.id_by_name.get(name).map(AsRef::as_ref)
    }

    /// In id order.
    pub(crate) fn values(&self) -> impl DoubleEndedIterator<Item = &Arc<T>> {
        self.by_id.values()
    }

    /// In id order, from the first id at or after `id`.
    pub(crate) fn values_from<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Arc<T>> + use<'a, T> {
        let from: Arc<str> = Arc::from(id);
        self.by_id.range(from..).map(|(_, entity)| entity)
    }

    /// Stores `entity` under its id, replacing any entity with that id, and
    /// returns the id as the table keeps it (shared with the change journal).
    pub(crate) fn put(&mut self, entity: Arc<T>) -> Arc<str> {
        let id: Arc<str> = match self.by_id.get_key_value(entity.id()) {
            Some((id, old)) => {
                let id = id.clone();
                if let Some(name) = old.name() {
                    self.id_by_name.remove(name);
                }
                id
            }
            None => Arc::from(entity.id()),
        };
        if let Some(name) = entity.name() {
            self.id_by_name.insert(Arc::from(name), id.clone());
        }
        self.by_id.insert(id.clone(), entity);
        id
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id)
            && let Some(name) = old.name()
        {
            self.id_by_name.remove(name);
        }
    }

    /// Appends every entity as a `state` family record, in id order.
    pub(crate) fn encode_into(&self, out: &mut Vec<KeyValue>) {
        out.extend(self.by_id.iter().map(|(id, e)| (keys::entity_key(T::KIND, id), e.encode_to_vec())));
    }

    /// Whether both tables are the very same maps (a clone not written to since).
    #[cfg(test)]
    pub(crate) fn ptr_eq(&self, other: &Table<T>) -> bool {
        self.by_id.ptr_eq(&other.by_id) && self.id_by_name.ptr_eq(&other.id_by_name)
    }

    #[cfg(test)]
    pub(crate) fn by_id(&self) -> &OrdMap<Arc<str>, Arc<T>> {
        &self.by_id
    }
}
