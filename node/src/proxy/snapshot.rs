//! What the data plane reads: an immutable, precompiled view of the gateway
//! state (router, balancers, keys), rebuilt after each applied Raft batch and
//! swapped in atomically. Requests never touch RocksDB or Raft.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate_proto::config::v1::{ApiKey, Consumer};
use tollgate_raft::GatewayState;

use super::balancer::RoundRobin;
use super::router::Router;
use super::upstream::{UpstreamClient, UpstreamClients};

pub struct GatewaySnapshot {
    /// Raft log index this snapshot reflects.
    pub revision: u64,
    pub router: Router,
    pub services: HashMap<String, CompiledService>,
    pub api_keys: HashMap<String, Arc<ApiKey>>,
    pub consumers: HashMap<String, Arc<Consumer>>,
}

pub struct CompiledService {
    pub name: String,
    pub balancer: RoundRobin,
    pub client: UpstreamClient,
    pub request_timeout: Duration,
}

/// Defaults for services that leave a timeout at 0.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutDefaults {
    pub connect: Duration,
    pub request: Duration,
}

impl GatewaySnapshot {
    pub fn empty() -> GatewaySnapshot {
        GatewaySnapshot {
            revision: 0,
            router: Router::build([]),
            services: HashMap::new(),
            api_keys: HashMap::new(),
            consumers: HashMap::new(),
        }
    }

    pub fn compile(state: &GatewayState, clients: &UpstreamClients, defaults: TimeoutDefaults) -> GatewaySnapshot {
        let or_default = |ms: u32, default: Duration| if ms == 0 { default } else { Duration::from_millis(ms.into()) };
        let services = state
            .services()
            .map(|s| {
                let id = s.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
                let compiled = CompiledService {
                    name: s.name.clone(),
                    balancer: RoundRobin::new(&s.targets),
                    client: clients.get(or_default(s.connect_timeout_ms, defaults.connect)),
                    request_timeout: or_default(s.request_timeout_ms, defaults.request),
                };
                (id, compiled)
            })
            .collect();
        let by_id =
            |meta: &Option<tollgate_proto::config::v1::Meta>| meta.as_ref().map(|m| m.id.clone()).unwrap_or_default();
        GatewaySnapshot {
            revision: state.applied_index(),
            router: Router::build(state.routes()),
            services,
            api_keys: state.api_keys().map(|k| (by_id(&k.meta), k.clone())).collect(),
            consumers: state.consumers().map(|c| (by_id(&c.meta), c.clone())).collect(),
        }
    }
}
