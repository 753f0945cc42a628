//! The limits of one snapshot, indexed by what they are attached to, so a
//! request finds its limits with a few hash lookups.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use tollgate_proto::config::v1::{Limit, LimitScope};
use tollgate_raft::GatewayState;

#[derive(Default)]
pub struct CompiledLimits {
    global: Vec<Arc<Limit>>,
    by_route: HashMap<String, Vec<Arc<Limit>>>,
    by_service: HashMap<String, Vec<Arc<Limit>>>,
    by_consumer: HashMap<String, Vec<Arc<Limit>>>,
    by_key: HashMap<String, Vec<Arc<Limit>>>,
}

/// Who is calling what: the identities a limit can be attached to or scoped by.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub route_id: &'a str,
    pub service_id: Option<&'a str>,
    pub consumer_id: Option<&'a str>,
    pub api_key_id: Option<&'a str>,
    pub client_ip: IpAddr,
}

/// A limit that applies to a request, with the value of its scope the
/// request is counted under.
#[derive(Debug, Clone)]
pub struct Bucketed {
    pub limit: Arc<Limit>,
    pub bucket: Box<str>,
}

impl CompiledLimits {
    pub fn compile(state: &GatewayState) -> CompiledLimits {
        let mut compiled = CompiledLimits::default();
        for limit in state.limits() {
            if limit.global {
                compiled.global.push(limit.clone());
            }
            for (ids, index) in [
                (&limit.route_ids, &mut compiled.by_route),
                (&limit.service_ids, &mut compiled.by_service),
                (&limit.consumer_ids, &mut compiled.by_consumer),
                (&limit.api_key_ids, &mut compiled.by_key),
            ] {
                for id in ids {
                    index.entry(id.clone()).or_default().push(limit.clone());
                }
            }
        }
        compiled
    }

    pub fn is_empty(&self) -> bool {
        self.global.is_empty()
            && self.by_route.is_empty()
            && self.by_service.is_empty()
            && self.by_consumer.is_empty()
            && self.by_key.is_empty()
    }

    /// Every limit attached to `who`, with its bucket, each once and in id
    /// order (so every request takes its leases in the same order). A limit
    /// scoped by model has an empty bucket: the model is known only once an
    /// AI backend has resolved it, which fills it in.
    pub fn applicable(&self, who: &Who<'_>) -> Vec<Bucketed> {
        self.attached(who)
            .into_iter()
            .filter_map(|limit| Some(Bucketed { bucket: bucket(limit, who)?, limit: limit.clone() }))
            .collect()
    }

    fn attached(&self, who: &Who<'_>) -> Vec<&Arc<Limit>> {
        if self.is_empty() {
            return Vec::new();
        }
        fn of<'m>(index: &'m HashMap<String, Vec<Arc<Limit>>>, id: Option<&str>) -> &'m [Arc<Limit>] {
            id.and_then(|id| index.get(id)).map(Vec::as_slice).unwrap_or_default()
        }
        let mut limits: Vec<&Arc<Limit>> = self
            .global
            .iter()
            .chain(of(&self.by_route, Some(who.route_id)))
            .chain(of(&self.by_service, who.service_id))
            .chain(of(&self.by_consumer, who.consumer_id))
            .chain(of(&self.by_key, who.api_key_id))
            .collect();
        if limits.len() > 1 {
            limits.sort_by(|a, b| a.id().cmp(b.id()));
            limits.dedup_by(|a, b| a.id() == b.id());
        }
        limits
    }
}

/// The scope's value for `who`. A key or consumer scope falls back to the
/// client's address for a caller without one (an open route), as Kong does,
/// so an anonymous caller is limited too rather than not at all.
fn bucket(limit: &Limit, who: &Who<'_>) -> Option<Box<str>> {
    let ip = || format!("ip:{}", client_bucket(who.client_ip)).into_boxed_str();
    Some(match limit.scope() {
        LimitScope::ApiKey => who.api_key_id.map_or_else(ip, Box::from),
        LimitScope::Consumer => who.consumer_id.map_or_else(ip, Box::from),
        LimitScope::Route => who.route_id.into(),
        LimitScope::Service => who.service_id.unwrap_or(who.route_id).into(),
        LimitScope::ClientIp => client_bucket(who.client_ip).into_boxed_str(),
        LimitScope::Model => Box::default(),
        LimitScope::Unspecified => return None,
    })
}

/// How a client address is counted: an IPv4 address alone, an IPv6 address
/// by its /64 (one subscriber's network, as a host is handed a whole /64):
/// a client rotating through its own addresses is still one bucket, and
/// cannot mint a bucket (a Raft write) per address. An IPv4-mapped IPv6
/// address counts as the IPv4 address.
fn client_bucket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let of = |ip: &str| client_bucket(ip.parse().unwrap());
        assert_eq!(of("2001:db8:1:2:aaaa::1"), of("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(of("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(of("2001:db8:1:2::1"), of("2001:db8:1:3::1"));
        assert_eq!(of("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(of("10.0.0.1"), "10.0.0.1");
    }
}
