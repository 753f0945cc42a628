//! `tollgate ctl limit create|list|get|update|delete`: rate limits and
//! budgets with flags instead of JSON. Stored through the generic entity
//! RPCs; routes, services, consumers and keys are given by name or id.

use clap::{Args, Subcommand, ValueEnum};
use tollgate_proto::admin::v1::{GetEntityRequest, PutEntityRequest};
use tollgate_proto::config::v1::{Limit, LimitScope, LimitUnit, LimitWindow};
use tollgate_raft::EntityKind;

use super::entities::{DeleteArgs, GetArgs, ListArgs};
use super::{CtlError, Printer, client, entities};

#[derive(Debug, Subcommand)]
pub enum LimitCmd {
    /// Create a limit: `limit create per-key --requests 100 --per minute --scope key --route orders`,
    /// or a budget: `limit create acme-monthly --budget-usd 50 --per month --scope consumer --consumer acme`.
    Create {
        /// The limit's name: the policy named in RateLimit headers.
        name: String,
        #[command(flatten)]
        spec: LimitSpec,
    },
    /// Every limit and budget.
    List,
    /// One limit, by name or id.
    Get {
        /// Name or id.
        limit: String,
    },
    /// Change a limit; flags not given keep their value (attachment flags
    /// given replace that kind's list). Live traffic follows at once.
    Update {
        /// Name or id.
        limit: String,
        #[command(flatten)]
        spec: LimitSpec,
    },
    /// Delete a limit: its requests are no longer counted against it.
    Delete {
        /// Name or id.
        limit: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Per {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scope {
    Key,
    Consumer,
    Route,
    Service,
    Model,
    ClientIp,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenCount {
    Input,
    Output,
    Total,
}

#[derive(Debug, Args)]
pub struct LimitSpec {
    /// At most N requests per window.
    #[arg(long, value_name = "N", conflicts_with_all = ["tokens", "budget_usd"])]
    requests: Option<u64>,
    /// At most N tokens per window (AI routes; see --count).
    #[arg(long, value_name = "N", conflicts_with = "budget_usd")]
    tokens: Option<u64>,
    /// Which tokens --tokens counts.
    #[arg(long, value_enum, default_value = "total", requires = "tokens")]
    count: TokenCount,
    /// A budget: at most this many US dollars per day or month (e.g. 12.50).
    #[arg(long, value_name = "USD")]
    budget_usd: Option<String>,
    /// The window: second, minute, hour, day, or month (budgets).
    #[arg(long, value_enum)]
    per: Option<Per>,
    /// Whose use is counted separately.
    #[arg(long, value_enum)]
    scope: Option<Scope>,
    /// Apply on this route (name or id); repeatable.
    #[arg(long = "route", value_name = "ROUTE")]
    routes: Vec<String>,
    /// Apply on this service's routes; repeatable.
    #[arg(long = "service", value_name = "SERVICE")]
    services: Vec<String>,
    /// Apply to this consumer's requests; repeatable.
    #[arg(long = "consumer", value_name = "CONSUMER")]
    consumers: Vec<String>,
    /// Apply to requests with this API key id; repeatable.
    #[arg(long = "key", value_name = "KEY_ID")]
    keys: Vec<String>,
    /// Apply to every request on the gateway.
    #[arg(long)]
    global: bool,
    /// Budgets: warn (header and metric) once this percentage is spent.
    #[arg(long, value_name = "PERCENT")]
    warn_at: Option<u32>,
    /// Output tokens reserved for a request without max_tokens.
    #[arg(long, value_name = "N")]
    default_output_tokens: Option<u64>,
    /// What the limit is for, for people reading `limit list`.
    #[arg(long)]
    description: Option<String>,
}

pub async fn limit_command(cmd: LimitCmd, admin: client::Admin, out: &Printer, stale: bool) -> Result<(), CtlError> {
    let kind = EntityKind::Limit;
    match cmd {
        LimitCmd::Create { name, spec } => {
            let mut limit = Limit { name, ..Default::default() };
            if spec.requests.is_none() && spec.tokens.is_none() && spec.budget_usd.is_none() {
                return Err(CtlError::Usage("say how much: --requests N, --tokens N or --budget-usd USD".into()));
            }
            spec.apply(&mut limit, admin.clone()).await?;
            put(limit, true, String::new(), admin, out).await
        }
        LimitCmd::Update { limit: id_or_name, spec } => {
            let mut limit = read(admin.clone(), &id_or_name).await?;
            spec.apply(&mut limit, admin.clone()).await?;
            put(limit, false, id_or_name, admin, out).await
        }
        LimitCmd::List => entities::list(ListArgs { kind }, admin, out, stale).await,
        LimitCmd::Get { limit } => entities::get(GetArgs { kind, id_or_name: limit }, admin, out, stale).await,
        LimitCmd::Delete { limit } => entities::delete(DeleteArgs { kind, id_or_name: limit }, admin, out).await,
    }
}

async fn read(mut admin: client::Admin, id_or_name: &str) -> Result<Limit, CtlError> {
    let request = GetEntityRequest { kind: "limit".into(), id_or_name: id_or_name.into(), stale: false };
    let stored = admin.get_entity(request).await?.into_inner();
    prost::Message::decode(stored.entity.as_slice()).map_err(|e| {
        CtlError::Status(tonic::Status::internal(format!("the node sent a limit this ctl cannot read: {e}")))
    })
}

async fn put(
    limit: Limit,
    create: bool,
    id_or_name: String,
    mut admin: client::Admin,
    out: &Printer,
) -> Result<(), CtlError> {
    let request =
        PutEntityRequest { kind: "limit".into(), entity: prost::Message::encode_to_vec(&limit), create, id_or_name };
    let stored = admin.put_entity(request).await?.into_inner();
    entities::written_entity(&stored, if create { "created" } else { "updated" }, out)
}

impl LimitSpec {
    async fn apply(self, limit: &mut Limit, admin: client::Admin) -> Result<(), CtlError> {
        if let Some(n) = self.requests {
            limit.set_unit(LimitUnit::Requests);
            limit.amount = n;
        }
        if let Some(n) = self.tokens {
            limit.set_unit(match self.count {
                TokenCount::Input => LimitUnit::InputTokens,
                TokenCount::Output => LimitUnit::OutputTokens,
                TokenCount::Total => LimitUnit::TotalTokens,
            });
            limit.amount = n;
        }
        if let Some(usd) = &self.budget_usd {
            limit.set_unit(LimitUnit::CostMicros);
            limit.amount = usd_to_micros(usd)?;
        }
        if let Some(per) = self.per {
            limit.set_window(match per {
                Per::Second => LimitWindow::Second,
                Per::Minute => LimitWindow::Minute,
                Per::Hour => LimitWindow::Hour,
                Per::Day => LimitWindow::Day,
                Per::Month => LimitWindow::Month,
            });
        }
        if let Some(scope) = self.scope {
            limit.set_scope(match scope {
                Scope::Key => LimitScope::ApiKey,
                Scope::Consumer => LimitScope::Consumer,
                Scope::Route => LimitScope::Route,
                Scope::Service => LimitScope::Service,
                Scope::Model => LimitScope::Model,
                Scope::ClientIp => LimitScope::ClientIp,
            });
        }
        for (names, kind, ids) in [
            (self.routes, EntityKind::Route, &mut limit.route_ids),
            (self.services, EntityKind::Service, &mut limit.service_ids),
            (self.consumers, EntityKind::Consumer, &mut limit.consumer_ids),
            (self.keys, EntityKind::ApiKey, &mut limit.api_key_ids),
        ] {
            if !names.is_empty() {
                *ids = resolve_ids(admin.clone(), kind, names).await?;
            }
        }
        if self.global {
            limit.global = true;
        }
        if let Some(pct) = self.warn_at {
            limit.warn_at_percent = pct;
        }
        if let Some(n) = self.default_output_tokens {
            limit.default_output_tokens = n;
        }
        if let Some(d) = self.description {
            limit.description = d;
        }
        Ok(())
    }
}

/// The ids of entities given by name or id (routes, consumers… by name are
/// what people type; limits store ids, which survive a rename).
async fn resolve_ids(mut admin: client::Admin, kind: EntityKind, names: Vec<String>) -> Result<Vec<String>, CtlError> {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let id = match kind {
            // Keys are addressed by id (their labels need not be unique).
            EntityKind::ApiKey => name,
            // Routes are typed (the generic read refuses them): their own RPC.
            EntityKind::Route => {
                let request = tollgate_proto::admin::v1::GetRequest { id_or_name: name.clone(), stale: false };
                let route = admin.get_route(request).await.map_err(|e| super::pre_read_failed(e, "route", &name))?;
                route.into_inner().meta.map(|m| m.id).unwrap_or_default()
            }
            _ => {
                let request = GetEntityRequest { kind: kind.shown().into(), id_or_name: name.clone(), stale: false };
                let stored =
                    admin.get_entity(request).await.map_err(|e| super::pre_read_failed(e, kind.shown(), &name))?;
                entities::entity_id(&stored.into_inner())?
            }
        };
        ids.push(id);
    }
    Ok(ids)
}

/// "12.5" → 12500000 micro-dollars, exactly (no floating point).
fn usd_to_micros(text: &str) -> Result<u64, CtlError> {
    let bad = || CtlError::Usage(format!("--budget-usd {text:?}: expected dollars such as 50 or 12.50"));
    let (whole, fraction) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if whole.is_empty() && fraction.is_empty() || fraction.len() > 6 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let fraction: u64 = format!("{fraction:0<6}").parse().map_err(|_| bad())?;
    whole.checked_mul(1_000_000).and_then(|w| w.checked_add(fraction)).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_become_micro_dollars_exactly() {
        assert_eq!(usd_to_micros("50").unwrap(), 50_000_000);
        assert_eq!(usd_to_micros("12.5").unwrap(), 12_500_000);
        assert_eq!(usd_to_micros("0.000001").unwrap(), 1);
        assert_eq!(usd_to_micros(".25").unwrap(), 250_000);
        for bad in ["", ".", "1.0000001", "-1", "1e3", "abc"] {
            assert!(usd_to_micros(bad).is_err(), "{bad:?}");
        }
    }
}
