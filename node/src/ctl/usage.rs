//! `tollgate ctl usage`: the cluster's usage counters (any member answers
//! for the whole cluster), one member's own journal (`--node`), and the
//! per-request records of every member (`usage records`), gathered from
//! each member's admin address as the cluster status lists it.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tollgate_llm::catalog::dollars;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{UsageOutcome, UsageRecord};

use super::client::{self, Admin, Cluster};
use super::output::{self, Format, Names};
use super::{CtlError, Printer, consumer_names, id};
use crate::usage::ledger::{REPORT_GROUPS, utc_day};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    command: Option<UsageCmd>,
    /// What to count by. The cluster's counters: one of all (default), key,
    /// consumer, model, provider, route, service. With --node: any of
    /// key, consumer, model, provider, credential, route, service, kind,
    /// day, comma separated [default there: key,model,day].
    #[arg(long, value_delimiter = ',')]
    by: Vec<String>,
    /// The cluster's counters per hour or per day.
    #[arg(long, default_value = "day", value_parser = ["hour", "day"])]
    period: String,
    /// Only the last stretch of time, e.g. 24h or 7d (with the counters:
    /// the periods it overlaps); default everything.
    #[arg(long, value_parser = super::parse_lifetime)]
    since: Option<i64>,
    /// One member's own journal (what it served, whether or not the
    /// cluster's counters hold it yet) instead of the cluster's counters.
    #[arg(long, value_name = "NODE_ID")]
    node: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum UsageCmd {
    /// Per-request records, oldest first, from every member's journal (or
    /// one member's with --node): `usage records --since 1h --status 429`.
    Records(RecordsArgs),
}

#[derive(Debug, Args)]
pub struct RecordsArgs {
    /// Requests that started within the last stretch of time, e.g. 15m, 1h or 7d.
    #[arg(long, default_value = "1h", value_parser = super::parse_lifetime)]
    since: i64,
    /// Only this API key (its id).
    #[arg(long)]
    key: Option<String>,
    /// Only this consumer (name or id).
    #[arg(long)]
    consumer: Option<String>,
    /// Only this route (its name).
    #[arg(long)]
    route: Option<String>,
    /// Only this model: as asked for, as served, or provider/model.
    #[arg(long)]
    model: Option<String>,
    /// Only answers with this HTTP status, e.g. 429.
    #[arg(long)]
    status: Option<u16>,
    /// At most this many records: the oldest that match.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Only this member's journal.
    #[arg(long, value_name = "NODE_ID")]
    node: Option<u64>,
}

/// What the usage commands need of the `ctl` invocation.
pub struct Context<'a> {
    pub admin: &'a mut Admin,
    pub cluster: &'a mut Cluster,
    /// The `--admin` address, and the token and timeout for other members.
    pub addr: &'a str,
    pub token: &'a str,
    pub timeout: Duration,
    pub out: &'a Printer,
    pub stale: bool,
}

pub async fn command(args: UsageArgs, cx: Context<'_>) -> Result<(), CtlError> {
    match (&args.command, args.node) {
        (Some(UsageCmd::Records(records)), _) => records_command(records, cx).await,
        (None, Some(node)) => node_report(&args, node, cx).await,
        (None, None) => cluster_counters(&args, cx).await,
    }
}

/// Names shown in a usage table instead of key and consumer ids.
#[derive(Default)]
struct UsageNames {
    keys: Names,
    consumers: Names,
}

impl UsageNames {
    fn show(&self, group: &str, value: &str) -> String {
        let names = match group {
            "key" => &self.keys,
            "consumer" => &self.consumers,
            _ => return value.to_string(),
        };
        names.get(value).cloned().unwrap_or_else(|| value.to_string())
    }
}

/// Names for the ids a usage table shows (`key`, `consumer`), fetched once
/// per command; JSON and CSV keep the ids. Best effort: a list that cannot
/// be read leaves the ids, as the report itself may still be shown.
async fn names(admin: &mut Admin, groups: &[&str], stale: bool, out: &Printer) -> UsageNames {
    let mut names = UsageNames::default();
    if out.format != Format::Table {
        return names;
    }
    if groups.contains(&"consumer") {
        names.consumers = consumer_names(admin, stale, out).await.unwrap_or_default();
    }
    if groups.contains(&"key")
        && let Ok(keys) = admin.list_api_keys(ListApiKeysRequest { consumer: String::new(), stale }).await
    {
        names.keys = keys
            .into_inner()
            .api_keys
            .into_iter()
            .map(|k| (id(&k.meta), if k.name.is_empty() { k.display_prefix } else { k.name }))
            .filter(|(_, name)| !name.is_empty())
            .collect();
    }
    names
}

fn since_ms(since: Option<i64>) -> i64 {
    since.map_or(0, |ms| crate::clock::unix_ms() - ms)
}

fn period_label(period: &str, start_ms: i64) -> String {
    if period == "hour" {
        let mut at = output::date(start_ms);
        at.truncate(16); // 2026-12-04T18:00
        at + "Z"
    } else {
        utc_day(start_ms)
    }
}

const COUNTS: [&str; 6] = ["REQUESTS", "ERRORS", "TOKENS_IN", "TOKENS_OUT", "CACHED_IN", "COST_USD"];

/// The cluster's counters, from whichever member `--admin` names.
async fn cluster_counters(args: &UsageArgs, cx: Context<'_>) -> Result<(), CtlError> {
    let dimension = match args.by.as_slice() {
        [] => "all".to_string(),
        [one] => one.clone(),
        _ => {
            return Err(CtlError::Usage(
                "--by takes one dimension for the cluster's counters (all, key, consumer, model, provider, route, \
                 service); several, and credential, kind or day, only for one node's journal with --node"
                    .into(),
            ));
        }
    };
    let mut usage = client::connect_usage(cx.addr, cx.token, cx.timeout).await?;
    let request = GetClusterUsageRequest {
        period: args.period.clone(),
        dimension: dimension.clone(),
        from_ms: since_ms(args.since),
        to_ms: 0,
        stale: cx.stale,
    };
    let report = usage.get_cluster_usage(request).await?.into_inner();
    let names = names(cx.admin, &[dimension.as_str()], cx.stale, cx.out).await;
    let by = (dimension != "all").then_some(dimension.as_str());
    let mut head: Vec<String> = vec!["PERIOD".into()];
    head.extend(by.map(str::to_ascii_uppercase));
    head.extend(COUNTS.map(String::from));
    let mut listing = Listing::new(head);
    for r in &report.rows {
        let cost = dollars(r.cost_picodollars);
        let mut value = json!({
            "period": report.period, "period_start_ms": r.period_start_ms,
            "period_start": period_label(&report.period, r.period_start_ms), "requests": r.requests,
            "errors": r.errors, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "cached_input_tokens": r.cached_input_tokens, "cost_picodollars": r.cost_picodollars, "cost_usd": cost,
        });
        let counts =
            [r.requests, r.errors, r.input_tokens, r.output_tokens, r.cached_input_tokens].map(|n| n.to_string());
        let mut row = vec![period_label(&report.period, r.period_start_ms)];
        let mut raw = row.clone();
        if let Some(by) = by {
            value[by] = Value::String(r.value.clone());
            row.push(names.show(by, &r.value));
            raw.push(r.value.clone());
        }
        listing.push(value, (row, raw), &counts, cost);
    }
    listing.print(cx.out);
    Ok(())
}

/// A usage listing as each output wants it: JSON values, a table (names,
/// dollars to six places) and CSV (ids, plain numbers).
struct Listing {
    values: Vec<Value>,
    table: Vec<Vec<String>>,
    csv: Vec<Vec<String>>,
}

impl Listing {
    fn new(head: Vec<String>) -> Listing {
        Listing { values: Vec::new(), table: vec![head.clone()], csv: vec![head] }
    }

    /// A row: its JSON value, its leading columns for the table and for
    /// CSV, then the counts and the cost in both.
    fn push(&mut self, value: Value, (mut row, mut raw): (Vec<String>, Vec<String>), counts: &[String], cost: f64) {
        row.extend(counts.iter().cloned().chain([format!("{cost:.6}")]));
        raw.extend(counts.iter().cloned().chain([format!("{cost}")]));
        self.values.push(value);
        self.table.push(row);
        self.csv.push(raw);
    }

    fn print(self, out: &Printer) {
        out.listing(Value::Array(self.values), self.table, self.csv);
    }
}

/// A member's admin address from the cluster status, or why there is none.
async fn member_addrs(cluster: &mut Cluster) -> Result<Vec<(u64, Result<String, String>)>, CtlError> {
    let status = cluster.get_cluster_status(GetClusterStatusRequest {}).await?.into_inner();
    Ok(status
        .members
        .into_iter()
        .map(|m| {
            let addr = match (m.reachable, m.admin_addr.is_empty()) {
                (true, false) => Ok(m.admin_addr),
                (true, true) => Err("it reports no admin address".to_string()),
                (false, _) => Err(m.error),
            };
            (m.node_id, addr)
        })
        .collect())
}

async fn member_addr(cluster: &mut Cluster, node: u64) -> Result<String, CtlError> {
    let members = member_addrs(cluster).await?;
    let Some((_, addr)) = members.into_iter().find(|(id, _)| *id == node) else {
        return Err(CtlError::Status(tonic::Status::not_found(format!(
            "node {node} is not a member; `tollgate ctl cluster status` lists the members"
        ))));
    };
    addr.map_err(|why| CtlError::Unavailable { addr: format!("node {node}"), why })
}

/// One member's own journal, summed by `--by` (the per-node report).
async fn node_report(args: &UsageArgs, node: u64, cx: Context<'_>) -> Result<(), CtlError> {
    let addr = member_addr(cx.cluster, node).await?;
    let (_, _, mut ai) = client::connect(&addr, cx.token, cx.timeout).await?;
    let group_by: Vec<String> = if args.by.is_empty() {
        ["key", "model", "day"].map(String::from).to_vec()
    } else {
        args.by.iter().filter(|g| !g.is_empty()).cloned().collect()
    };
    if let Some(unknown) = group_by.iter().find(|g| !REPORT_GROUPS.contains(&g.as_str())) {
        return Err(CtlError::Usage(format!("--by {unknown}: use any of {}", REPORT_GROUPS.join(", "))));
    }
    let request = GetUsageRequest { from_ms: since_ms(args.since), to_ms: 0, group_by: group_by.clone() };
    let report = ai.get_usage(request).await.map_err(|e| client::name_the_node(e.into(), &addr))?.into_inner();
    let groups: Vec<&str> = group_by.iter().map(String::as_str).collect();
    let names = names(cx.admin, &groups, cx.stale, cx.out).await;
    let mut head: Vec<String> = group_by.iter().map(|g| g.to_ascii_uppercase()).collect();
    head.extend(
        ["REQUESTS", "ERRORS", "TOKENS_IN", "TOKENS_OUT", "CACHED_IN", "ESTIMATED", "COST_USD"].map(String::from),
    );
    let mut listing = Listing::new(head);
    for r in &report.rows {
        let cost = dollars(r.cost_picodollars);
        let mut value = json!({
            "node_id": report.node_id, "requests": r.requests, "errors": r.errors, "cancelled": r.cancelled,
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
            "cached_input_tokens": r.cached_input_tokens, "estimated": r.estimated,
            "cost_picodollars": r.cost_picodollars, "cost_usd": cost,
        });
        for (g, v) in group_by.iter().zip(&r.group) {
            value[g] = Value::String(v.clone());
        }
        let counts = [r.requests, r.errors, r.input_tokens, r.output_tokens, r.cached_input_tokens, r.estimated]
            .map(|n| n.to_string());
        let row: Vec<String> = group_by.iter().zip(&r.group).map(|(g, v)| names.show(g, v)).collect();
        let raw: Vec<String> = r.group.clone();
        listing.push(value, (row, raw), &counts, cost);
    }
    listing.print(cx.out);
    Ok(())
}

/// One member's answer to a records query, or why there is none.
type Answer = (u64, Result<ListUsageRecordsResponse, String>);

/// Asks one member for its records, within `timeout`: a frozen member must
/// not keep the others' answers from being shown.
async fn ask(
    node: u64,
    addr: Result<String, String>,
    request: ListUsageRecordsRequest,
    token: &str,
    timeout: Duration,
) -> Answer {
    let call = async {
        let addr = addr?;
        let mut usage = client::connect_usage(&addr, token, timeout).await.map_err(|e| e.to_string())?;
        usage.list_usage_records(request).await.map(|r| r.into_inner()).map_err(|s| format!("{addr}: {}", s.message()))
    };
    let answer = match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    };
    (node, answer)
}

async fn records_command(args: &RecordsArgs, cx: Context<'_>) -> Result<(), CtlError> {
    let consumer = match &args.consumer {
        Some(c) => {
            let found = cx.admin.get_consumer(GetRequest { id_or_name: c.clone(), stale: cx.stale }).await?;
            id(&found.into_inner().meta)
        }
        None => String::new(),
    };
    let request = ListUsageRecordsRequest {
        from_ms: crate::clock::unix_ms() - args.since,
        to_ms: 0,
        key: args.key.clone().unwrap_or_default(),
        consumer,
        route: args.route.clone().unwrap_or_default(),
        model: args.model.clone().unwrap_or_default(),
        status: args.status.map_or(0, u32::from),
        limit: args.limit,
    };
    let mut members = member_addrs(cx.cluster).await?;
    if let Some(node) = args.node {
        members.retain(|(id, _)| *id == node);
        if members.is_empty() {
            return Err(CtlError::Status(tonic::Status::not_found(format!(
                "node {node} is not a member; `tollgate ctl cluster status` lists the members"
            ))));
        }
    }
    // Half the command's time per member, so that one that hangs still
    // leaves time to print what the others said.
    let per_member = cx.timeout / 2;
    let asks = members.into_iter().map(|(node, addr)| ask(node, addr, request.clone(), cx.token, per_member));
    let answers: Vec<Answer> = futures::future::join_all(asks).await;
    if answers.iter().all(|(_, a)| a.is_err()) {
        let why: Vec<String> =
            answers.iter().filter_map(|(n, a)| a.as_ref().err().map(|e| format!("node {n}: {e}"))).collect();
        return Err(CtlError::Unavailable { addr: "every member".into(), why: why.join("; ") });
    }
    let names = names(cx.admin, &["consumer", "key"], cx.stale, cx.out).await;
    print_records(answers, args.limit as usize, &names, cx.out);
    Ok(())
}

/// Merges the members' records by start time, keeps the oldest `limit`,
/// and says which members did not answer (in the output, and on stderr).
fn print_records(answers: Vec<Answer>, limit: usize, names: &UsageNames, out: &Printer) {
    let mut records: Vec<UsageRecord> = Vec::new();
    let mut members = Vec::new();
    let mut truncated = false;
    for (node, answer) in answers {
        match answer {
            Ok(a) => {
                truncated |= a.truncated;
                members.push(json!({"node_id": node, "answered": true, "records": a.records.len(),
                    "truncated": a.truncated, "journal_last_seq": a.journal_last_seq}));
                records.extend(a.records);
            }
            Err(error) => {
                eprintln!("tollgate: node {node} did not answer, its records are missing: {error}");
                members.push(json!({"node_id": node, "answered": false, "error": error}));
            }
        }
    }
    records.sort_by_key(|r| (r.at_ms, r.node_id, r.seq));
    truncated |= records.len() > limit;
    records.truncate(limit);
    if truncated {
        eprintln!("tollgate: more records match than --limit {limit}; narrow --since or the filters, or raise --limit");
    }
    let mut table = vec![
        [
            "TIME",
            "NODE",
            "KIND",
            "ROUTE",
            "STATUS",
            "CONSUMER",
            "KEY",
            "MODEL",
            "TOKENS_IN",
            "TOKENS_OUT",
            "COST_USD",
            "MS",
            "REQUEST_ID",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut csv = vec![RECORD_CSV_HEAD.map(String::from).to_vec()];
    for r in &records {
        let model = crate::usage::ledger::model_of(r);
        table.push(vec![
            time(r.at_ms),
            r.node_id.to_string(),
            r.kind.clone(),
            dash(&r.route),
            r.http_status.to_string(),
            dash(&names.show("consumer", &r.consumer_id)),
            dash(&names.show("key", &r.api_key_id)),
            dash(&model),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            format!("{:.6}", dollars(r.cost_picodollars)),
            r.duration_ms.to_string(),
            r.request_id.clone(),
        ]);
        csv.push(record_csv(r));
    }
    let value = json!({
        "records": records.iter().map(record_json).collect::<Vec<_>>(),
        "members": members,
        "truncated": truncated,
    });
    out.listing(value, table, csv);
}

fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.to_string() }
}

fn time(at_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn outcome(r: &UsageRecord) -> &'static str {
    match UsageOutcome::try_from(r.outcome) {
        Ok(UsageOutcome::Error) => "error",
        Ok(UsageOutcome::Cancelled) => "cancelled",
        _ => "ok",
    }
}

fn record_json(r: &UsageRecord) -> Value {
    json!({
        "node_id": r.node_id, "seq": r.seq, "at_ms": r.at_ms, "time": time(r.at_ms), "request_id": r.request_id,
        "kind": r.kind, "route": r.route, "service": r.service, "consumer_id": r.consumer_id,
        "api_key_id": r.api_key_id, "http_status": r.http_status, "outcome": outcome(r), "error": r.error,
        "endpoint": r.endpoint, "requested_model": r.requested_model, "provider": r.provider, "model": r.model,
        "credential": r.credential, "stream": r.stream, "input_tokens": r.input_tokens,
        "output_tokens": r.output_tokens, "cached_input_tokens": r.cached_input_tokens, "estimated": r.estimated,
        "cost_picodollars": r.cost_picodollars, "cost_usd": dollars(r.cost_picodollars),
        "duration_ms": r.duration_ms, "ttft_ms": r.ttft_ms, "attempts": r.attempts, "finish_reason": r.finish_reason,
    })
}

const RECORD_CSV_HEAD: [&str; 20] = [
    "node_id",
    "seq",
    "time",
    "at_ms",
    "request_id",
    "kind",
    "route",
    "service",
    "consumer_id",
    "api_key_id",
    "http_status",
    "outcome",
    "requested_model",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "cost_usd",
    "duration_ms",
];

fn record_csv(r: &UsageRecord) -> Vec<String> {
    vec![
        r.node_id.to_string(),
        r.seq.to_string(),
        time(r.at_ms),
        r.at_ms.to_string(),
        r.request_id.clone(),
        r.kind.clone(),
        r.route.clone(),
        r.service.clone(),
        r.consumer_id.clone(),
        r.api_key_id.clone(),
        r.http_status.to_string(),
        outcome(r).to_string(),
        r.requested_model.clone(),
        r.provider.clone(),
        r.model.clone(),
        r.input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cached_input_tokens.to_string(),
        dollars(r.cost_picodollars).to_string(),
        r.duration_ms.to_string(),
    ]
}
