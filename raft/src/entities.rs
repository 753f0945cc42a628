//! The replicated entities, declared once. Everything that must name every
//! entity (kinds, key prefixes, tables, accessors, changes, staging, snapshot
//! encode and load, command dispatch) follows from this list; see
//! `registry.rs` for what the macro makes of it.
//!
//! An entry reads:
//!
//! ```text
//! Message {
//!     table: plural,            // GatewayState::plural() lists them; the table's name
//!     get: singular,            // GatewayState::singular(id)
//!     find: find_singular,      // only for kinds with a unique `name`: by id or name
//!     key: b"abc/",             // prefix of its keys in the `state` family: a format, never change it
//!     shown: "message",         // how errors and logs name the kind; `tollgate ctl get message …`
//!     list: "message list",     // the `tollgate ctl` command that lists them, for not-found errors;
//!                               // "list message" for a kind served by the generic commands only
//!     typed: "message",         // optional, see below
//!     ops: [create CreateX, update UpdateX, delete DeleteX],
//! }
//! ```
//!
//! `ops` maps each command `Op` of the entity to a generic path of `apply`:
//! `create`, `update`, `upsert` (create or replace by unique name) or `delete`.
//!
//! Every kind is served by the generic admin surface (`PutEntity`,
//! `GetEntity`, `ListEntities`, `DeleteEntity`; `tollgate ctl
//! get|list|create|update|delete <kind>`), which stores what it is sent,
//! with a fresh id on create, through the ops above. A kind whose admin API
//! must do work on the way in (seal a secret, generate a key) or out (redact
//! it) is `typed: "<ctl command>"` instead: the generic surface refuses to
//! read or write it and names that command.
//!
//! Adding an entity: its message (`entities.proto`) and its ops
//! (`command.proto`); an entry here, at the end of the list; and its
//! [`Rules`](crate::apply::Rules) (validator, referential rules and, for the
//! property test, an arbitrary value) in `apply/`. Its admin API and CLI are
//! the generic ones; no code in `node` names it.

use tollgate_proto::config::v1::{
    AdminToken, ApiKey, ApiVersion, AuditEntry, Consumer, JoinToken, Limit, ModelAlias, ModelPrice, Provider,
    PublishPolicy, QuotaWindow, Route, Service, Subscription, Team, UsageCounter, UsageWatermark,
};

use crate::registry::entities;

entities! {
    Service {
        table: services, get: service, find: find_service,
        key: b"svc/", shown: "service", list: "service list",
        ops: [create CreateService, update UpdateService, delete DeleteService],
    },
    Route {
        table: routes, get: route, find: find_route,
        key: b"rte/", shown: "route", list: "route list",
        // JWT secrets are sealed, legacy backends adopted, hosts normalized.
        typed: "route",
        ops: [create CreateRoute, update UpdateRoute, delete DeleteRoute],
    },
    Consumer {
        table: consumers, get: consumer, find: find_consumer,
        key: b"con/", shown: "consumer", list: "consumer list",
        ops: [create CreateConsumer, update UpdateConsumer, delete DeleteConsumer],
    },
    // Key labels need not be unique; keys are addressed by id.
    ApiKey {
        table: api_keys, get: api_key,
        key: b"key/", shown: "api key", list: "key list",
        // The key is generated and only its hash stored.
        typed: "key",
        ops: [create CreateApiKey, update UpdateApiKey, delete DeleteApiKey],
    },
    // A join token is used or revoked, never edited.
    JoinToken {
        table: join_tokens, get: join_token,
        key: b"jtk/", shown: "join token", list: "cluster tokens",
        typed: "cluster token",
        ops: [create CreateJoinToken, delete DeleteJoinToken],
    },
    Provider {
        table: providers, get: provider, find: find_provider,
        key: b"prv/", shown: "provider", list: "provider list",
        // Credentials and header values are sealed; reads show hints.
        typed: "provider",
        ops: [create CreateProvider, update UpdateProvider, delete DeleteProvider],
    },
    ModelAlias {
        table: model_aliases, get: model_alias, find: find_model_alias,
        key: b"als/", shown: "model alias", list: "alias list",
        ops: [create CreateModelAlias, update UpdateModelAlias, delete DeleteModelAlias],
    },
    // Prices are set by model name, whether or not one exists yet.
    ModelPrice {
        table: model_prices, get: model_price, find: find_model_price,
        key: b"prc/", shown: "model price", list: "price list",
        ops: [upsert PutModelPrice, delete DeleteModelPrice],
    },
    // Rate limits and budgets (DESIGN §5).
    Limit {
        table: limits, get: limit, find: find_limit,
        key: b"lim/", shown: "limit", list: "limit list",
        ops: [create CreateLimit, update UpdateLimit, delete DeleteLimit],
    },
    // The entries below are written by the cluster itself, never by an
    // admin: quota leases (apply/quota.rs) and the usage ledger
    // (apply/usage.rs). They have no ops, and are read through their own
    // commands.
    QuotaWindow {
        table: quota_windows, get: quota_window,
        key: b"qta/", shown: "quota window", list: "limit status",
        typed: "limit status",
        ops: [],
    },
    UsageCounter {
        table: usage_counters, get: usage_counter,
        key: b"usc/", shown: "usage counter", list: "usage",
        typed: "usage",
        ops: [],
    },
    UsageWatermark {
        table: usage_watermarks, get: usage_watermark,
        key: b"usw/", shown: "usage watermark", list: "usage",
        typed: "usage",
        ops: [],
    },
    // Governance (DESIGN §7, apply/governance.rs).
    Team {
        table: teams, get: team, find: find_team,
        key: b"tea/", shown: "team", list: "list team",
        ops: [create CreateTeam, update UpdateTeam, delete DeleteTeam],
    },
    AdminToken {
        table: admin_tokens, get: admin_token, find: find_admin_token,
        key: b"adm/", shown: "admin token", list: "admin token list",
        // The token is generated and only its hash stored.
        typed: "admin token",
        ops: [create CreateAdminToken, update UpdateAdminToken, delete DeleteAdminToken],
    },
    // Versions are addressed by id; (service, version) is unique.
    ApiVersion {
        table: api_versions, get: api_version,
        key: b"ver/", shown: "api version", list: "version list",
        ops: [create CreateApiVersion, update UpdateApiVersion, delete DeleteApiVersion],
    },
    Subscription {
        table: subscriptions, get: subscription,
        key: b"sub/", shown: "subscription", list: "subscription list",
        ops: [create CreateSubscription, update UpdateSubscription, delete DeleteSubscription],
    },
    PublishPolicy {
        table: publish_policies, get: publish_policy, find: find_publish_policy,
        key: b"pol/", shown: "publish policy", list: "list publish-policy",
        ops: [create CreatePublishPolicy, update UpdatePublishPolicy, delete DeletePublishPolicy],
    },
    // Written by apply for every admin change and refused attempt
    // (apply/audit.rs); read through `tollgate ctl audit`.
    AuditEntry {
        table: audit_entries, get: audit_entry,
        key: b"aud/", shown: "audit entry", list: "audit",
        typed: "audit",
        ops: [],
    },
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tollgate_proto::config::v1::Meta;
    use tollgate_proto::raft::v1::command::Op;

    use super::*;
    use crate::apply::Action;

    #[test]
    fn kinds_are_found_by_the_names_people_type() {
        for kind in EntityKind::ALL {
            assert_eq!(EntityKind::from_name(kind.shown()), Some(*kind));
            assert_eq!(EntityKind::from_name(&kind.arg_name()), Some(*kind));
            assert_eq!(EntityKind::from_name(&kind.shown().replace(' ', "_")), Some(*kind));
            assert_eq!(EntityKind::from_name(kind.message_name()), Some(*kind));
        }
        assert_eq!(EntityKind::from_name("Model-Price"), Some(EntityKind::ModelPrice));
        assert_eq!(EntityKind::from_name("ModelPrice"), Some(EntityKind::ModelPrice));
        assert_eq!(EntityKind::ModelPrice.message_name(), "tollgate.config.v1.ModelPrice");
        assert_eq!(EntityKind::from_name("gizmo"), None);
        let message = EntityKind::unknown("gizmo");
        assert!(message.contains("\"gizmo\"") && message.contains("consumer, ") && message.contains("model-price"));
        assert!(message.contains("route"), "typed kinds are listed too: {message}");
    }

    #[test]
    fn kinds_with_secrets_are_typed_the_rest_generic() {
        let typed: Vec<_> = EntityKind::ALL.iter().filter(|k| k.typed_command().is_some()).copied().collect();
        assert_eq!(
            typed,
            [
                EntityKind::Route,
                EntityKind::ApiKey,
                EntityKind::JoinToken,
                EntityKind::Provider,
                EntityKind::QuotaWindow,
                EntityKind::UsageCounter,
                EntityKind::UsageWatermark,
                EntityKind::AdminToken,
                EntityKind::AuditEntry
            ]
        );
        assert_eq!(EntityKind::Route.typed_command(), Some("route"));
    }

    #[test]
    fn ops_are_built_only_for_the_changes_the_registry_declares() {
        let meta = Meta { id: "c1".into(), ..Default::default() };
        let consumer =
            Consumer { meta: Some(meta.clone()), name: "acme".into(), description: "d".into(), ..Default::default() };
        let mut decoded = EntityKind::Consumer.decode(&consumer.encode_to_vec()).unwrap();
        assert_eq!((decoded.id(), decoded.name()), ("c1", Some("acme")));
        decoded.set_meta(Meta { id: "c2".into(), ..Default::default() });
        assert_eq!(decoded.id(), "c2");
        let expected = Consumer { meta: Some(Meta { id: "c2".into(), ..Default::default() }), ..consumer };
        assert_eq!(decoded.clone().into_op(Action::Update), Some(Op::UpdateConsumer(expected.clone())));
        assert_eq!(decoded.clone().into_op(Action::Create), Some(Op::CreateConsumer(expected)));
        assert_eq!(decoded.into_op(Action::Upsert), None);
        assert_eq!(EntityKind::Consumer.delete_op("c1".into()), Some(Op::DeleteConsumer("c1".into())));

        let price = EntityKind::ModelPrice.decode(&ModelPrice::default().encode_to_vec()).unwrap();
        assert_eq!(price.clone().into_op(Action::Create), None);
        assert!(matches!(price.into_op(Action::Upsert), Some(Op::PutModelPrice(_))));
        assert!(EntityKind::ModelPrice.supports(Action::Upsert));
        assert!(!EntityKind::ModelPrice.supports(Action::Create));
        assert!(!EntityKind::JoinToken.supports(Action::Update));
        assert!(EntityKind::JoinToken.supports(Action::Create));
        assert_eq!(EntityKind::JoinToken.delete_op("t".into()), Some(Op::DeleteJoinToken("t".into())));

        assert!(EntityKind::Consumer.decode(b"\xff\xff").is_err(), "not a message");
    }

    #[test]
    fn the_state_is_read_by_kind() {
        let mut state = crate::GatewayState::default();
        let consumer = Consumer { meta: crate::tests::meta("c1"), name: "acme".into(), ..Default::default() };
        state.commit(&crate::Change::Put(AnyEntity::Consumer(std::sync::Arc::new(consumer))), 1);
        let by_name = state.entity(EntityKind::Consumer, "acme").unwrap();
        assert_eq!(by_name, state.entity(EntityKind::Consumer, "c1").unwrap());
        assert_eq!(by_name.kind(), EntityKind::Consumer);
        assert_eq!(Consumer::decode(by_name.encode_to_vec().as_slice()).unwrap().name, "acme");
        assert_eq!(state.entities(EntityKind::Consumer), [by_name]);
        assert!(state.entities(EntityKind::Service).is_empty());
        assert!(state.entity(EntityKind::Service, "acme").is_none());
    }
}
