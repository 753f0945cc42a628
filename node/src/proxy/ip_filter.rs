//! IP allow and deny lists (DESIGN §2, phase "authorize"). The client is the
//! TCP peer: X-Forwarded-For is not trusted, since any client can write it.

use std::net::IpAddr;

#[derive(Debug, Default)]
pub struct IpFilter {
    allow: Vec<(IpAddr, u8)>,
    deny: Vec<(IpAddr, u8)>,
}

impl IpFilter {
    /// Entries were validated by `apply`; anything unparsable is skipped.
    pub fn compile(allow: &[String], deny: &[String]) -> Option<IpFilter> {
        if allow.is_empty() && deny.is_empty() {
            return None;
        }
        let parse = |list: &[String]| list.iter().filter_map(|c| tollgate_raft::parse_cidr(c)).collect();
        Some(IpFilter { allow: parse(allow), deny: parse(deny) })
    }

    /// Deny wins; an allow list, when present, must contain the client.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if self.deny.iter().any(|(net, len)| contains(*net, *len, ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|(net, len)| contains(*net, *len, ip))
    }
}

/// An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let f = IpFilter::compile(&list(&["10.0.0.0/8", "::1"]), &list(&["10.1.0.0/16"])).unwrap();
        assert!(f.permits("10.2.3.4".parse().unwrap()));
        assert!(!f.permits("10.1.3.4".parse().unwrap()), "deny wins over a wider allow");
        assert!(!f.permits("192.168.0.1".parse().unwrap()), "not on the allow list");
        assert!(f.permits("::1".parse().unwrap()));
        assert!(f.permits("::ffff:10.9.9.9".parse().unwrap()), "v4-mapped v6 is treated as v4");
        let deny_only = IpFilter::compile(&[], &list(&["127.0.0.1"])).unwrap();
        assert!(!deny_only.permits("127.0.0.1".parse().unwrap()));
        assert!(deny_only.permits("127.0.0.2".parse().unwrap()));
        assert!(IpFilter::compile(&[], &[]).is_none());
    }
}
