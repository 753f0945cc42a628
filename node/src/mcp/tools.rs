//! The tools an MCP route offers a caller: each operation of the OpenAPI
//! document of every API the caller may call (its subscription approved,
//! or none needed), and every prompt API as one tool. Only APIs with a
//! live version are offered (the catalog's rule), and only the route's
//! team's when it names one.

use std::sync::Arc;

use http::Method;
use serde_json::{Map, Value, json};
use tollgate_proto::config::v1::{ApiVersion, Route, Service, SubscriptionMode, SubscriptionState, VersionState};
use tollgate_raft::GatewayState;

/// What a tool call sends through the proxy.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// The route's host, when it matches on one.
    pub host: Option<String>,
    /// The public path, with `{name}` pieces filled from the arguments.
    pub path: String,
    pub path_params: Vec<String>,
    pub query_params: Vec<String>,
    pub header_params: Vec<String>,
    pub body: bool,
    /// A prompt API: the arguments are its variables, sent as the body.
    pub prompt: bool,
    /// The route checks a credential: the caller's is sent (never to an
    /// open route, whose upstream would receive it).
    pub authenticates: bool,
    /// The version header and the version to name in it.
    pub version_header: Option<(String, String)>,
    /// The route the call goes to: its IP rules hold for the caller.
    pub route_id: String,
}

#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub output_schema: Option<Value>,
    pub call: Call,
}

impl Tool {
    pub fn listing(&self) -> Value {
        let mut tool = json!({"name": self.name, "description": self.description, "inputSchema": self.input_schema});
        if let Some(output) = &self.output_schema {
            tool["outputSchema"] = output.clone();
        }
        tool
    }
}

/// Header parameters a tool may set: none the gateway owns (credentials,
/// identity, framing, forwarding, versions).
fn settable_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("x-")
        && !["x-forwarded-", "x-consumer-", "x-anonymous-", "x-api-key", "x-tollgate", "x-real-ip", "x-request-id"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// The most tools one listing offers.
const MAX_TOOLS: usize = 512;

/// One service's tools, and who may use them.
struct ServiceTools {
    service_id: String,
    team_id: String,
    /// Callable without a subscription.
    open: bool,
    tools: Vec<Arc<Tool>>,
}

/// Every service's tools, built once per change to services, versions or
/// routes (parsing OpenAPI documents is not for every request), then
/// filtered per caller.
#[derive(Default)]
pub struct ToolCache {
    built: std::sync::Mutex<Option<(u64, Arc<Vec<ServiceTools>>)>>,
}

impl ToolCache {
    /// The tools `consumer_id` may call through an MCP route of `team`.
    pub fn for_caller(&self, state: &GatewayState, consumer_id: &str, team: Option<&str>) -> Vec<Arc<Tool>> {
        let all = self.all(state);
        all.iter()
            .filter(|s| team.is_none_or(|t| t == s.team_id))
            .filter(|s| s.open || approved(state, &s.service_id, consumer_id))
            .flat_map(|s| s.tools.iter().cloned())
            .take(MAX_TOOLS)
            .collect()
    }

    fn all(&self, state: &GatewayState) -> Arc<Vec<ServiceTools>> {
        let fingerprint = fingerprint(state);
        let mut built = self.built.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match built.as_ref() {
            Some((seen, tools)) if *seen == fingerprint => tools.clone(),
            _ => {
                let tools = Arc::new(build(state));
                *built = Some((fingerprint, tools.clone()));
                tools
            }
        }
    }
}

/// What the tools are built from: every service, version and route, by
/// id and revision.
fn fingerprint(state: &GatewayState) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut add = |meta: &Option<tollgate_proto::config::v1::Meta>| {
        if let Some(m) = meta {
            (&m.id, m.revision).hash(&mut hasher);
        }
    };
    state.services().for_each(|s| add(&s.meta));
    state.api_versions().for_each(|v| add(&v.meta));
    state.routes().for_each(|r| add(&r.meta));
    hasher.finish()
}

fn build(state: &GatewayState) -> Vec<ServiceTools> {
    let mut names = std::collections::HashSet::new();
    let mut out = Vec::new();
    for service in state.services() {
        let id = service.meta.as_ref().map(|m| m.id.as_str()).unwrap_or_default();
        let Some(version) = current_version(state, service, id) else { continue };
        // A route a call can reach: one matching on a host needs an exact one.
        let reachable =
            |r: &&Arc<Route>| r.backend_service_id() == Some(id) && (r.hosts.is_empty() || route_host(r).is_some());
        let Some(route) = state.routes().find(reachable) else { continue };
        let made = match &service.prompt {
            Some(prompt) => vec![prompt_tool(service, route, &version, prompt)],
            None => operation_tools(service, route, &version),
        };
        let tools = made
            .into_iter()
            .map(|mut tool| {
                tool.name = unique(&mut names, &tool.name);
                Arc::new(tool)
            })
            .collect();
        out.push(ServiceTools {
            service_id: id.to_string(),
            team_id: service.team_id.clone(),
            open: service.subscription == SubscriptionMode::Unspecified as i32,
            tools,
        });
    }
    out
}

/// `name`, or `name_2`, `name_3`... when taken (names are cut to 64).
fn unique(taken: &mut std::collections::HashSet<String>, name: &str) -> String {
    let mut candidate = name.to_string();
    let mut n = 1;
    while !taken.insert(candidate.clone()) {
        n += 1;
        let suffix = format!("_{n}");
        candidate = format!("{}{suffix}", name.chars().take(64 - suffix.len()).collect::<String>());
    }
    candidate
}

fn approved(state: &GatewayState, service_id: &str, consumer_id: &str) -> bool {
    state.subscriptions().any(|s| {
        s.service_id == service_id && s.consumer_id == consumer_id && s.state == SubscriptionState::Approved as i32
    })
}

/// The version a tool calls: the default when live, else the newest
/// published, else the newest deprecated.
fn current_version(state: &GatewayState, service: &Service, service_id: &str) -> Option<Arc<ApiVersion>> {
    let live: Vec<Arc<ApiVersion>> = state
        .api_versions()
        .filter(|v| v.service_id == service_id)
        .filter(|v| tollgate_raft::version_is_live(VersionState::try_from(v.state).unwrap_or_default()))
        .cloned()
        .collect();
    let default = service.versioning.as_ref().map(|v| v.default_version.as_str()).unwrap_or_default();
    let created = |v: &&Arc<ApiVersion>| v.meta.as_ref().map_or(0, |m| m.created_at_ms);
    live.iter()
        .find(|v| v.version == default)
        .or_else(|| live.iter().filter(|v| v.state == VersionState::Published as i32).max_by_key(created))
        .or_else(|| live.iter().max_by_key(created))
        .cloned()
}

/// `[A-Za-z0-9_.-]`, at most 64 characters: what MCP clients accept.
fn tool_name(service: &str, operation: &str) -> String {
    let raw = format!("{service}.{operation}");
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') { c } else { '_' }).collect();
    clean.chars().take(64).collect()
}

fn version_header(service: &Service, version: &ApiVersion) -> Option<(String, String)> {
    let header = &service.versioning.as_ref()?.header;
    (!header.is_empty()).then(|| (header.clone(), version.version.clone()))
}

fn authenticates(route: &Route) -> bool {
    route.auth != tollgate_proto::config::v1::AuthMode::None as i32
}

fn route_host(route: &Route) -> Option<String> {
    route.hosts.iter().find(|h| !h.contains('*')).cloned()
}

fn prompt_tool(
    service: &Service,
    route: &Route,
    version: &ApiVersion,
    prompt: &tollgate_proto::config::v1::PromptSpec,
) -> Tool {
    let path = route.paths.first().map(|p| p.path.clone()).unwrap_or_else(|| "/".into());
    Tool {
        name: tool_name(&service.name, "ask"),
        description: if service.description.is_empty() {
            format!("Prompt API {} (model {})", service.name, prompt.model)
        } else {
            service.description.clone()
        },
        input_schema: crate::ai::prompt_doc::input_schema(prompt),
        output_schema: (!prompt.output_schema.is_empty()).then(|| crate::ai::prompt_doc::output_schema(prompt)),
        call: Call {
            method: Method::POST,
            host: route_host(route),
            path: public_path(service, route, version, &path, false),
            path_params: Vec::new(),
            query_params: Vec::new(),
            header_params: Vec::new(),
            body: true,
            prompt: true,
            authenticates: authenticates(route),
            version_header: version_header(service, version),
            route_id: route.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        },
    }
}

/// The path a client sends: a document's `path` goes under the route's
/// prefix when the route strips it (the upstream sees it without); with
/// the version segment when the service names versions by path and not by
/// header. The server checks that it lands on the route.
fn public_path(service: &Service, route: &Route, version: &ApiVersion, path: &str, from_document: bool) -> String {
    let prefix = route.paths.first().map(|p| p.path.trim_end_matches('/')).unwrap_or_default();
    let public = if from_document && route.strip_prefix { format!("{prefix}{path}") } else { path.to_string() };
    let by_path_only = service.versioning.as_ref().is_some_and(|v| v.by_path && v.header.is_empty());
    if !by_path_only {
        return public;
    }
    let rest = public.strip_prefix(prefix).unwrap_or(&public);
    format!("{prefix}/{}{rest}", version.version)
}

const METHODS: [(&str, Method); 7] = [
    ("get", Method::GET),
    ("put", Method::PUT),
    ("post", Method::POST),
    ("delete", Method::DELETE),
    ("patch", Method::PATCH),
    ("head", Method::HEAD),
    ("options", Method::OPTIONS),
];

fn operation_tools(service: &Service, route: &Route, version: &ApiVersion) -> Vec<Tool> {
    let Some(document) = crate::portal::parse_openapi(&version.openapi) else { return Vec::new() };
    let definitions = document["components"]["schemas"].as_object().cloned().unwrap_or_default();
    let mut tools = Vec::new();
    for (path, item) in document["paths"].as_object().into_iter().flatten() {
        for (method_name, method) in METHODS.iter() {
            let Some(op) = item.get(*method_name) else { continue };
            let operation =
                op["operationId"].as_str().map(str::to_string).unwrap_or_else(|| format!("{method_name}{path}"));
            let parameters = crate::portal::openapi_parameters(item, op);
            let (input_schema, call_params) = input_of(&parameters, op, &definitions);
            let summary = op["summary"].as_str().or(op["description"].as_str()).unwrap_or_default();
            tools.push(Tool {
                name: tool_name(&service.name, &operation),
                description: format!("{} {path} — {summary}", method_name.to_uppercase())
                    .trim_end_matches(" — ")
                    .to_string(),
                input_schema,
                output_schema: None,
                call: Call {
                    method: method.clone(),
                    host: route_host(route),
                    path: public_path(service, route, version, path, true),
                    path_params: call_params.path,
                    query_params: call_params.query,
                    header_params: call_params.header,
                    body: op.get("requestBody").is_some(),
                    prompt: false,
                    authenticates: authenticates(route),
                    version_header: version_header(service, version),
                    route_id: route.meta.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
                },
            });
        }
    }
    tools
}

#[derive(Default)]
struct Params {
    path: Vec<String>,
    query: Vec<String>,
    header: Vec<String>,
}

/// A tool's input schema: one property per parameter and `body` for the
/// request body; the document's schemas under `$defs`, so `$ref`s resolve.
fn input_of(parameters: &[&Value], op: &Value, definitions: &Map<String, Value>) -> (Value, Params) {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut params = Params::default();
    for p in parameters {
        let Some(name) = p["name"].as_str() else { continue };
        let list = match p["in"].as_str() {
            Some("path") => &mut params.path,
            Some("query") => &mut params.query,
            Some("header") if settable_header(name) => &mut params.header,
            _ => continue,
        };
        list.push(name.to_string());
        let mut schema = p.get("schema").cloned().unwrap_or_else(|| json!({"type": "string"}));
        if let Some(description) = p["description"].as_str() {
            schema["description"] = json!(description);
        }
        properties.insert(name.to_string(), schema);
        if p["required"] == true || p["in"] == "path" {
            required.push(name.to_string());
        }
    }
    if let Some(content) = op["requestBody"]["content"].as_object() {
        let schema = content.get("application/json").or_else(|| content.values().next());
        properties.insert("body".into(), schema.and_then(|s| s.get("schema")).cloned().unwrap_or_else(|| json!({})));
        if op["requestBody"]["required"] == true {
            required.push("body".into());
        }
    }
    let mut schema = json!({"type": "object", "properties": properties, "required": required});
    let used = referenced(&schema, definitions);
    if !used.is_empty() {
        schema["$defs"] = Value::Object(used);
    }
    rewrite_refs(&mut schema);
    (schema, params)
}

/// The document's schemas `schema` refers to, and those they refer to:
/// each tool carries what it needs, not the whole document.
fn referenced(schema: &Value, definitions: &Map<String, Value>) -> Map<String, Value> {
    let mut wanted = Vec::new();
    refs_in(schema, &mut wanted);
    let mut used = Map::new();
    while let Some(name) = wanted.pop() {
        if used.contains_key(&name) {
            continue;
        }
        if let Some(definition) = definitions.get(&name) {
            refs_in(definition, &mut wanted);
            used.insert(name, definition.clone());
        }
    }
    used
}

fn refs_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(name) =
                map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(name.to_string());
            }
            map.values().for_each(|v| refs_in(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| refs_in(v, out)),
        _ => {}
    }
}

/// `#/components/schemas/X` → `#/$defs/X`, everywhere in the schema.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
            {
                *r = format!("#/$defs/{name}");
            }
            map.values_mut().for_each(rewrite_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}
