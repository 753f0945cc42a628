//! How an entity joins the replicated state. The one list of entities is in
//! `entities.rs`; the `entities!` macro below turns it into everything that
//! must name every entity, so that none can be left out of a snapshot, a
//! load, a staging or a dispatch by forgetting a line somewhere else:
//!
//! - `EntityKind`, its key prefix in the `state` family, how messages name
//!   it and which `tollgate ctl` command lists it;
//! - `impl Entity` for each message, and `AnyEntity` (one of each);
//! - `Tables`: one [`Table`](crate::table::Table) per entity inside
//!   [`GatewayState`](crate::GatewayState), with put/remove by kind and the
//!   snapshot encode and load;
//! - the public accessors of `GatewayState` (`services()`, `service(id)`,
//!   `find_service(id_or_name)`, …);
//! - `dispatch`: each command `Op` to the generic create, update, upsert or
//!   delete of `apply`, which asks the entity's [`Rules`](crate::apply::Rules)
//!   only for what is particular to it;
//! - `summarize`: the secret-free description of a command;
//! - in tests, `arbitrary_op`: commands over every entity for the property test;
//! - the generic admin surface (`node/src/admin/entities.rs`, `tollgate ctl
//!   get|list|create|update|delete <kind>`): each kind's protobuf message
//!   name, the kind by the name people type, decoding a message into an
//!   [`AnyEntity`], building the `Op` of each change the entry's `ops`
//!   declares, lookups by kind, and whether the kind is `typed` (its own
//!   admin RPCs do work on the way in, so the generic surface leaves it alone).

use std::sync::Arc;

use prost::Message;
use tollgate_proto::config::v1::Meta;

use crate::entities::{AnyEntity, EntityKind, Tables};
use crate::table::Table;

/// What the generic state and apply code needs to know about an entity
/// type. Implemented by `entities!` for every listed message.
pub(crate) trait Entity: Message + Default + Clone + PartialEq + Sized + 'static {
    const KIND: EntityKind;
    fn meta(&self) -> Option<&Meta>;
    fn meta_mut(&mut self) -> &mut Option<Meta>;
    fn id(&self) -> &str {
        self.meta().map_or("", |m| m.id.as_str())
    }
    /// The unique name, for kinds that have one.
    fn name(&self) -> Option<&str>;
    fn table(tables: &Tables) -> &Table<Self>;
    fn wrap(entity: Arc<Self>) -> AnyEntity;
}

/// Declares the replicated entities; invoked once, in `entities.rs`, whose
/// header documents the syntax.
macro_rules! entities {
    // === what one operation kind does ===
    (@run create, $ty:ident, $state:ident, $input:ident, $now:ident, $index:ident) => {
        $crate::apply::create::<$ty>($state, $input, $now, $index)
    };
    (@run update, $ty:ident, $state:ident, $input:ident, $now:ident, $index:ident) => {
        $crate::apply::update::<$ty>($state, $input, $now, $index)
    };
    (@run upsert, $ty:ident, $state:ident, $input:ident, $now:ident, $index:ident) => {
        $crate::apply::upsert::<$ty>($state, $input, $now, $index)
    };
    (@run delete, $ty:ident, $state:ident, $input:ident, $now:ident, $index:ident) => {
        $crate::apply::delete::<$ty>($state, $input)
    };
    (@summary delete, $ty:ident, $input:ident) => {
        format!("delete {} {}", <$ty as $crate::registry::Entity>::KIND, $input)
    };
    (@summary $action:ident, $ty:ident, $input:ident) => {{
        let action = $crate::registry::entities!(@action $action);
        format!(
            "{} {} {}",
            action.verb(),
            <$ty as $crate::registry::Entity>::KIND,
            <$ty as $crate::apply::Rules>::label($input, action)
        )
    }};
    (@action create) => { $crate::apply::Action::Create };
    (@action update) => { $crate::apply::Action::Update };
    (@action upsert) => { $crate::apply::Action::Upsert };
    (@arbitrary delete, $ty:ident, $variant:ident) => {
        ::proptest::strategy::Strategy::boxed(::proptest::strategy::Strategy::prop_map(
            $crate::tests::arbitrary_id(),
            ::tollgate_proto::raft::v1::command::Op::$variant,
        ))
    };
    (@arbitrary $action:ident, $ty:ident, $variant:ident) => {
        ::proptest::strategy::Strategy::boxed(::proptest::strategy::Strategy::prop_map(
            <$ty as $crate::apply::Rules>::arbitrary(),
            ::tollgate_proto::raft::v1::command::Op::$variant,
        ))
    };
    (@name $entity:expr, $find:ident) => { Some($entity.name.as_str()) };
    (@name $entity:expr,) => { None };
    (@typed $command:literal) => { Some($command) };
    (@typed) => { None };
    // Whether an `ops` entry is the change `$wanted` (a runtime `Action`).
    (@does delete, $wanted:ident) => { false };
    (@does $action:ident, $wanted:ident) => { $wanted == $crate::registry::entities!(@action $action) };
    // The `Op` of the change `$wanted` on `$entity`, if `ops` declares one:
    // an if-else chain over the entry's ops, deletes left out.
    (@into_op $entity:ident, $wanted:ident;) => {{
        let _ = $entity;
        None
    }};
    (@into_op $entity:ident, $wanted:ident; delete $variant:ident $(, $action:ident $rest:ident)*) => {
        $crate::registry::entities!(@into_op $entity, $wanted; $($action $rest),*)
    };
    (@into_op $entity:ident, $wanted:ident; $first:ident $variant:ident $(, $action:ident $rest:ident)*) => {
        if $wanted == $crate::registry::entities!(@action $first) {
            Some(::tollgate_proto::raft::v1::command::Op::$variant(::std::sync::Arc::unwrap_or_clone($entity)))
        } else {
            $crate::registry::entities!(@into_op $entity, $wanted; $($action $rest),*)
        }
    };
    // The delete `Op` of the entry, if `ops` declares one.
    (@delete_op $id:ident;) => { None };
    (@delete_op $id:ident; delete $variant:ident $(, $action:ident $rest:ident)*) => {
        Some(::tollgate_proto::raft::v1::command::Op::$variant($id))
    };
    (@delete_op $id:ident; $first:ident $variant:ident $(, $action:ident $rest:ident)*) => {
        $crate::registry::entities!(@delete_op $id; $($action $rest),*)
    };

    // === the list ===
    ($(
        $ty:ident {
            table: $table:ident,
            get: $get:ident,
            $(find: $find:ident,)?
            key: $key:literal,
            shown: $shown:literal,
            list: $list:literal,
            $(typed: $typed:literal,)?
            ops: [$($action:ident $variant:ident),* $(,)?] $(,)?
        }
    ),+ $(,)?) => {
        /// A kind of replicated entity.
        // Serialized by position in forwarded-write rejections between
        // nodes: new kinds go at the end of the list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ::serde::Serialize, ::serde::Deserialize)]
        pub enum EntityKind {
            $($ty,)+
        }

        impl EntityKind {
            /// Every kind, in the order of the registry.
            pub const ALL: &'static [EntityKind] = &[$(EntityKind::$ty,)+];

            /// How messages name the kind ("api key").
            pub fn shown(self) -> &'static str {
                match self {
                    $(EntityKind::$ty => $shown,)+
                }
            }

            /// The prefix of this kind's keys in the `state` family: `<kind>/<id>`.
            pub(crate) fn key_prefix(self) -> &'static [u8] {
                match self {
                    $(EntityKind::$ty => $key,)+
                }
            }

            /// The `tollgate ctl` command that lists entities of this kind.
            pub(crate) fn list_command(self) -> &'static str {
                match self {
                    $(EntityKind::$ty => $list,)+
                }
            }

            /// The kind a `state` family key belongs to.
            pub(crate) fn of_key(key: &[u8]) -> Option<EntityKind> {
                EntityKind::ALL.iter().copied().find(|kind| key.starts_with(kind.key_prefix()))
            }

            /// The protobuf full name of the kind's message
            /// ("tollgate.config.v1.Consumer"), for a descriptor lookup.
            pub fn message_name(self) -> &'static str {
                match self {
                    $(EntityKind::$ty => concat!("tollgate.config.v1.", stringify!($ty)),)+
                }
            }

            /// How a command line names the kind: `shown` with hyphens ("model-price").
            pub fn arg_name(self) -> String {
                self.shown().replace(' ', "-")
            }

            /// The kind people mean by `name`: its shown name with spaces,
            /// hyphens or underscores ("model price", "model-price",
            /// "model_price"), or its message name ("ModelPrice",
            /// "tollgate.config.v1.ModelPrice"), in any case.
            pub fn from_name(name: &str) -> Option<EntityKind> {
                let spaced = name.trim().replace(['-', '_'], " ");
                EntityKind::ALL.iter().copied().find(|kind| {
                    spaced.eq_ignore_ascii_case(kind.shown())
                        || name.eq_ignore_ascii_case(kind.message_name())
                        || kind.message_name().rsplit('.').next().is_some_and(|short| name.eq_ignore_ascii_case(short))
                })
            }

            /// What to say when no kind is named `name`: the kinds the
            /// generic surface serves, then those with their own commands.
            pub fn unknown(name: &str) -> String {
                let names = |typed: bool| {
                    EntityKind::ALL
                        .iter()
                        .filter(|kind| kind.typed_command().is_some() == typed)
                        .map(|kind| kind.arg_name())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                format!(
                    "unknown entity kind {name:?}; the kinds are {} (and {}, through their own commands)",
                    names(false),
                    names(true)
                )
            }

            /// `Some(command)` when the kind is `typed`: its own admin RPCs
            /// do work on the way in (seal a secret, generate a key) and out
            /// (redact), and `tollgate ctl <command>` is the way to it. The
            /// generic entity surface neither reads nor writes such a kind.
            /// `None`: the generic surface serves it.
            pub fn typed_command(self) -> Option<&'static str> {
                match self {
                    $(EntityKind::$ty => $crate::registry::entities!(@typed $($typed)?),)+
                }
            }

            /// Whether the kind's `ops` declare a command for `action`.
            pub fn supports(self, action: $crate::apply::Action) -> bool {
                match self {
                    $(EntityKind::$ty => false $(|| $crate::registry::entities!(@does $action, action))*,)+
                }
            }

            /// Decodes a message of this kind from its protobuf bytes.
            pub fn decode(self, bytes: &[u8]) -> Result<AnyEntity, ::prost::DecodeError> {
                match self {
                    $(EntityKind::$ty => {
                        <$ty as ::prost::Message>::decode(bytes).map(|e| AnyEntity::$ty(::std::sync::Arc::new(e)))
                    })+
                }
            }

            /// The command that deletes the entity of this kind with `id`,
            /// if its `ops` declare one.
            pub fn delete_op(self, id: String) -> Option<::tollgate_proto::raft::v1::command::Op> {
                match self {
                    $(EntityKind::$ty => $crate::registry::entities!(@delete_op id; $($action $variant),*),)+
                }
            }
        }

        impl ::std::fmt::Display for EntityKind {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.shown())
            }
        }

        $(
            impl $crate::registry::Entity for $ty {
                const KIND: EntityKind = EntityKind::$ty;
                fn meta(&self) -> Option<&::tollgate_proto::config::v1::Meta> {
                    self.meta.as_ref()
                }
                fn meta_mut(&mut self) -> &mut Option<::tollgate_proto::config::v1::Meta> {
                    &mut self.meta
                }
                fn name(&self) -> Option<&str> {
                    $crate::registry::entities!(@name self, $($find)?)
                }
                fn table(tables: &Tables) -> &$crate::table::Table<Self> {
                    &tables.$table
                }
                fn wrap(entity: ::std::sync::Arc<Self>) -> AnyEntity {
                    AnyEntity::$ty(entity)
                }
            }
        )+

        /// One entity of any kind, as a change carries it.
        #[derive(Debug, Clone, PartialEq)]
        pub enum AnyEntity {
            $($ty(::std::sync::Arc<$ty>),)+
        }

        impl AnyEntity {
            pub fn kind(&self) -> EntityKind {
                match self {
                    $(AnyEntity::$ty(_) => EntityKind::$ty,)+
                }
            }

            pub fn id(&self) -> &str {
                match self {
                    $(AnyEntity::$ty(e) => <$ty as $crate::registry::Entity>::id(e),)+
                }
            }

            /// The protobuf bytes stored in the `state` family.
            pub fn encode_to_vec(&self) -> Vec<u8> {
                match self {
                    $(AnyEntity::$ty(e) => ::prost::Message::encode_to_vec(e.as_ref()),)+
                }
            }

            pub fn meta(&self) -> Option<&::tollgate_proto::config::v1::Meta> {
                match self {
                    $(AnyEntity::$ty(e) => <$ty as $crate::registry::Entity>::meta(e),)+
                }
            }

            /// Replaces the entity's meta (a fresh id for a create, the
            /// target's id for an update).
            pub fn set_meta(&mut self, meta: ::tollgate_proto::config::v1::Meta) {
                match self {
                    $(AnyEntity::$ty(e) => {
                        *<$ty as $crate::registry::Entity>::meta_mut(::std::sync::Arc::make_mut(e)) = Some(meta)
                    })+
                }
            }

            /// The unique name, for kinds that have one.
            pub fn name(&self) -> Option<&str> {
                match self {
                    $(AnyEntity::$ty(e) => <$ty as $crate::registry::Entity>::name(e),)+
                }
            }

            /// The command that makes the change `action` with this entity,
            /// if its kind's `ops` declare one.
            pub fn into_op(self, action: $crate::apply::Action) -> Option<::tollgate_proto::raft::v1::command::Op> {
                match self {
                    $(AnyEntity::$ty(entity) => $crate::registry::entities!(@into_op entity, action; $($action $variant),*),)+
                }
            }
        }

        /// One table per entity kind; the entity part of `GatewayState`.
        #[derive(Debug, Clone, Default)]
        pub(crate) struct Tables {
            $($table: $crate::table::Table<$ty>,)+
        }

        impl Tables {
            /// Stores `entity`, and returns its id as the table keeps it.
            pub(crate) fn put(&mut self, entity: &AnyEntity) -> ::std::sync::Arc<str> {
                match entity {
                    $(AnyEntity::$ty(e) => self.$table.put(e.clone()),)+
                }
            }

            pub(crate) fn remove(&mut self, kind: EntityKind, id: &str) {
                match kind {
                    $(EntityKind::$ty => self.$table.remove(id),)+
                }
            }

            /// Every entity as `state` family records, table by table.
            pub(crate) fn encode_into(&self, out: &mut Vec<::tollgate_storage::KeyValue>) {
                $(self.$table.encode_into(out);)+
            }

            /// Adds one `state` family record of `kind`, held in the current form.
            pub(crate) fn insert_encoded(
                &mut self,
                kind: EntityKind,
                value: &[u8],
            ) -> Result<(), $crate::error::RaftNodeError> {
                match kind {
                    $(EntityKind::$ty => self.$table.put(::std::sync::Arc::new($crate::apply::load::<$ty>(value)?)),)+
                };
                Ok(())
            }

            /// Whether every table is the very same map as in `other`.
            #[cfg(test)]
            pub(crate) fn ptr_eq(&self, other: &Tables) -> bool {
                true $(&& self.$table.ptr_eq(&other.$table))+
            }
        }

        impl $crate::state::GatewayState {
            $(
                #[doc = concat!("The ", $shown, " with this id.")]
                pub fn $get(&self, id: &str) -> Option<&::std::sync::Arc<$ty>> {
                    self.tables().$table.get(id)
                }

                #[doc = concat!("Every ", $shown, ", in id order.")]
                pub fn $table(&self) -> impl DoubleEndedIterator<Item = &::std::sync::Arc<$ty>> {
                    self.tables().$table.values()
                }

                $(
                    #[doc = concat!("The ", $shown, " with this id, else the one with this unique name.")]
                    pub fn $find(&self, id_or_name: &str) -> Option<&::std::sync::Arc<$ty>> {
                        self.tables().$table.find(id_or_name)
                    }
                )?
            )+
        }

        impl $crate::state::GatewayState {
            /// The entity of `kind` with this id, else the one with this
            /// unique name.
            pub fn entity(&self, kind: EntityKind, id_or_name: &str) -> Option<AnyEntity> {
                match kind {
                    $(EntityKind::$ty => self.tables().$table.find(id_or_name).cloned().map(AnyEntity::$ty),)+
                }
            }

            /// Every entity of `kind`, in id order.
            pub fn entities(&self, kind: EntityKind) -> Vec<AnyEntity> {
                match kind {
                    $(EntityKind::$ty => self.tables().$table.values().cloned().map(AnyEntity::$ty).collect(),)+
                }
            }
        }

        /// Runs the generic path of `op`'s kind of change for its entity.
        pub(crate) fn dispatch(
            state: &$crate::state::GatewayState,
            op: &::tollgate_proto::raft::v1::command::Op,
            now: i64,
            index: u64,
        ) -> Result<$crate::apply::Outcome, $crate::error::ApplyError> {
            use ::tollgate_proto::raft::v1::command::Op;
            match op {
                $($(Op::$variant(input) => $crate::registry::entities!(@run $action, $ty, state, input, now, index),)*)+
                // Quota leases and usage batches (apply/quota.rs, apply/usage.rs).
                other => $crate::apply::apply_system_op(state, other, now, index),
            }
        }

        /// A short, secret-free description of `op` for logs and the audit trail.
        pub(crate) fn summarize(op: &::tollgate_proto::raft::v1::command::Op) -> String {
            use ::tollgate_proto::raft::v1::command::Op;
            match op {
                $($(Op::$variant(input) => $crate::registry::entities!(@summary $action, $ty, input),)*)+
                other => $crate::apply::summarize_system_op(other),
            }
        }

        /// Any operation on any registered entity, valid or not.
        #[cfg(test)]
        pub(crate) fn arbitrary_op() -> ::proptest::strategy::BoxedStrategy<::tollgate_proto::raft::v1::command::Op> {
            ::proptest::strategy::Strategy::boxed(::proptest::strategy::Union::new(vec![
                $($($crate::registry::entities!(@arbitrary $action, $ty, $variant),)*)+
                $crate::tests::arbitrary_system_op(),
            ]))
        }
    };
}
pub(crate) use entities;
