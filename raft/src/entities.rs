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
//!     shown: "message",         // how errors and logs name the kind
//!     list: "message list",     // the `tollgate ctl` command that lists them, for not-found errors
//!     ops: [create CreateX, update UpdateX, delete DeleteX],
//! }
//! ```
//!
//! `ops` maps each command `Op` of the entity to a generic path of `apply`:
//! `create`, `update`, `upsert` (create or replace by unique name) or `delete`.
//!
//! Adding an entity: its message (`entities.proto`) and its ops
//! (`command.proto`); an entry here, at the end of the list; and its
//! [`Rules`](crate::apply::Rules) (validator, referential rules and, for the
//! property test, an arbitrary value) in `apply/`. Its admin API and CLI live
//! in `node`.

use tollgate_proto::config::v1::{ApiKey, Consumer, JoinToken, ModelAlias, ModelPrice, Provider, Route, Service};

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
        ops: [create CreateApiKey, update UpdateApiKey, delete DeleteApiKey],
    },
    // A join token is used or revoked, never edited.
    JoinToken {
        table: join_tokens, get: join_token,
        key: b"jtk/", shown: "join token", list: "cluster tokens",
        ops: [create CreateJoinToken, delete DeleteJoinToken],
    },
    Provider {
        table: providers, get: provider, find: find_provider,
        key: b"prv/", shown: "provider", list: "provider list",
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
}
