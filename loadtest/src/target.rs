//! Target URLs and the loopback-only safety rule.

use std::net::{IpAddr, SocketAddr};

use http::Uri;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("invalid target URL `{0}`: write it as http://HOST:PORT/PATH or https://HOST:PORT/PATH")]
    Invalid(String),
    #[error("cannot resolve `{0}`: {1}")]
    Resolve(String, std::io::Error),
    #[error(
        "target `{url}` resolves to {addr}, which is not loopback; pass --allow-remote (or allow_remote = true in the scenario) if you really mean to load a remote host"
    )]
    NotLoopback { url: String, addr: IpAddr },
}

/// A resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub tls: bool,
    /// Host name used for SNI and certificate checks.
    pub host: String,
    /// `host:port` as sent in Host / :authority.
    pub authority: String,
    pub path_and_query: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `url`; refuses non-loopback addresses unless `allow_remote`.
    pub async fn resolve(url: &str, allow_remote: bool) -> Result<Self, TargetError> {
        let invalid = || TargetError::Invalid(url.to_string());
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid()),
        };
        let host = uri.host().ok_or_else(invalid)?.trim_matches(['[', ']']).to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri.authority().ok_or_else(invalid)?.to_string();
        let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| TargetError::Resolve(url.to_string(), e))?
            .collect();
        if let Some(a) = addrs.iter().find(|a| !allow_remote && !a.ip().is_loopback()) {
            return Err(TargetError::NotLoopback { url: url.to_string(), addr: a.ip() });
        }
        let addr = *addrs
            .first()
            .ok_or_else(|| TargetError::Resolve(url.to_string(), std::io::Error::other("no addresses")))?;
        Ok(Target { url: url.to_string(), tls, host, authority, path_and_query, addr })
    }
}
