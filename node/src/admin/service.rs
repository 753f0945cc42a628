//! `tollgate.admin.v1.AdminService`: every write is a Raft command; every read
//! is served from a linearizable view of the replicated state.

use std::sync::Arc;

use prost::Message;
use rand::RngCore;
use tollgate_proto::admin::v1::admin_service_server::AdminService;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{ApiKey, AuthMode, Consumer, JwtAuth, Meta, PathMatch, Route, Service};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::secrets::jwt_secret_context;
use tollgate_raft::{GatewayState, RaftNode};
use tonic::{Request, Response, Status};

use super::{entities, propose};
use crate::apikey;
use crate::proxy::ProxyContext;

pub struct Admin {
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
}

impl Admin {
    pub fn new(raft: RaftNode, proxy: Arc<ProxyContext>) -> Admin {
        Admin { raft, proxy }
    }

    async fn write<T: Message + Default>(&self, op: Op) -> Result<T, Status> {
        propose::write(&self.raft, &self.proxy, op).await
    }

    async fn delete(&self, op: Op) -> Result<Response<DeleteResponse>, Status> {
        propose::delete(&self.raft, &self.proxy, op).await
    }

    async fn read(&self) -> Result<Arc<GatewayState>, Status> {
        propose::read(&self.raft, false).await
    }

    async fn read_with(&self, stale: bool) -> Result<Arc<GatewayState>, Status> {
        propose::read(&self.raft, stale).await
    }

    async fn service_id(&self, id_or_name: &str) -> Result<String, Status> {
        let state = self.read().await?;
        state.find_service(id_or_name).map(|s| id_of(&s.meta)).ok_or_else(|| not_found("service", id_or_name))
    }

    async fn route_id(&self, id_or_name: &str) -> Result<String, Status> {
        let state = self.read().await?;
        state.find_route(id_or_name).map(|r| id_of(&r.meta)).ok_or_else(|| not_found("route", id_or_name))
    }

    async fn consumer_id(&self, id_or_name: &str) -> Result<String, Status> {
        let state = self.read().await?;
        state.find_consumer(id_or_name).map(|c| id_of(&c.meta)).ok_or_else(|| not_found("consumer", id_or_name))
    }
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Seals a route's JWT HMAC secret so that only ciphertext is replicated.
/// An update that sends no secret keeps the route's current one (sealing
/// it now if an earlier version stored it in plain text).
pub(super) fn seal_jwt_secret(
    secrets: &tollgate_raft::secrets::SecretBox,
    route: &mut Route,
    existing: Option<&JwtAuth>,
) -> Result<(), Status> {
    let Some(jwt) = route.jwt.as_mut() else { return Ok(()) };
    // Only this server seals; ciphertext sent by a client is not trusted.
    jwt.sealed_hs_secret.clear();
    // A route that no longer accepts HS* tokens drops its secret, so
    // turning HS256 back on later needs a new one.
    if !jwt.algorithms.iter().any(|a| a.starts_with("HS")) {
        jwt.hs_secret.clear();
        return Ok(());
    }
    let secret = match (std::mem::take(&mut jwt.hs_secret), existing) {
        (secret, _) if !secret.is_empty() => secret,
        (_, Some(old)) if !old.sealed_hs_secret.is_empty() => {
            jwt.sealed_hs_secret = old.sealed_hs_secret.clone();
            return Ok(());
        }
        (_, Some(old)) => old.hs_secret.clone(),
        (_, None) => String::new(),
    };
    if secret.is_empty() {
        return Ok(());
    }
    // Its length is checked when the command applies: sealing keeps it.
    let context = jwt_secret_context(&id_of(&route.meta));
    jwt.sealed_hs_secret = secrets.seal(&context, &secret).map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(())
}

/// A key as reads show it: never its hash (any viewer token may read keys).
fn shown_key(key: &ApiKey) -> ApiKey {
    ApiKey { secret_sha256: Vec::new(), ..key.clone() }
}

pub(super) fn id_of(meta: &Option<Meta>) -> String {
    meta.as_ref().map(|m| m.id.clone()).unwrap_or_default()
}

pub(super) fn fresh_meta() -> Option<Meta> {
    Some(Meta { id: new_id(), ..Default::default() })
}

pub(super) fn not_found(kind: &str, id: &str) -> Status {
    Status::not_found(format!("{kind} {id:?} does not exist; list them with `tollgate ctl {kind} list`"))
}

/// Which entity an update names: its id when given, else its (current) name.
pub(super) fn update_target(meta: &Option<Meta>, name: &str) -> Result<String, Status> {
    let key = match id_of(meta) {
        id if !id.is_empty() => id,
        _ => name.to_string(),
    };
    required("meta.id or name", &key)?;
    Ok(key)
}

pub(super) fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Ok(())
}

/// What the API returns: never the JWT secret, sealed or not.
fn redacted(mut route: Route) -> Route {
    if let Some(jwt) = route.jwt.as_mut() {
        jwt.hs_secret.clear();
        jwt.sealed_hs_secret.clear();
    }
    route
}

/// Target hosts are case-insensitive: stored lower-case, as pools and
/// health checks key them. Shared with the generic entity path.
pub(super) fn normalize_service(service: &mut Service) {
    for target in &mut service.targets {
        target.host = target.host.to_ascii_lowercase();
    }
}

/// Accepts a service name where an id is expected; the id is what is stored.
fn resolve_service_name(route: &mut Route, state: &GatewayState) {
    if let Some(service) = route.backend_service_id().and_then(|s| state.find_service(s)) {
        route.set_service_backend(id_of(&service.meta));
    }
}

/// Fills in what clients may leave out, the same way for every client:
/// the backend in either format (see `Route::adopt_legacy_backend`), a path
/// without a kind is a prefix, a route without an auth mode requires an API
/// key (closed by default), hosts are case-insensitive, methods upper-case.
pub(super) fn normalize_route(route: &mut Route) -> Result<(), Status> {
    route.adopt_legacy_backend().map_err(Status::invalid_argument)?;
    for path in &mut route.paths {
        if path.kind == PathMatch::Unspecified as i32 {
            path.kind = PathMatch::Prefix as i32;
        }
    }
    if route.auth == AuthMode::Unspecified as i32 {
        route.auth = AuthMode::ApiKey as i32;
    }
    route.hosts.iter_mut().for_each(|h| *h = h.to_ascii_lowercase());
    route.methods.iter_mut().for_each(|m| *m = m.to_ascii_uppercase());
    Ok(())
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn create_service(&self, request: Request<Service>) -> Result<Response<Service>, Status> {
        let mut service = request.into_inner();
        service.meta = fresh_meta();
        normalize_service(&mut service);
        self.write(Op::CreateService(service)).await.map(Response::new)
    }

    async fn get_service(&self, request: Request<GetRequest>) -> Result<Response<Service>, Status> {
        let GetRequest { id_or_name: key, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let found = state.find_service(&key).ok_or_else(|| not_found("service", &key))?;
        Ok(Response::new(found.as_ref().clone()))
    }

    async fn list_services(&self, request: Request<ListRequest>) -> Result<Response<ListServicesResponse>, Status> {
        let state = self.read_with(request.into_inner().stale).await?;
        let mut services: Vec<Service> = state.services().map(|s| s.as_ref().clone()).collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn update_service(&self, request: Request<Service>) -> Result<Response<Service>, Status> {
        let mut service = request.into_inner();
        let key = update_target(&service.meta, &service.name)?;
        service.meta = Some(Meta { id: self.service_id(&key).await?, ..Default::default() });
        normalize_service(&mut service);
        self.write(Op::UpdateService(service)).await.map(Response::new)
    }

    async fn delete_service(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = self.service_id(&request.into_inner().id_or_name).await?;
        self.delete(Op::DeleteService(id)).await
    }

    async fn create_route(&self, request: Request<Route>) -> Result<Response<Route>, Status> {
        let mut route = request.into_inner();
        route.meta = fresh_meta();
        normalize_route(&mut route)?;
        seal_jwt_secret(&self.proxy.shared.secrets, &mut route, None)?;
        if route.backend_service_id().is_some() {
            resolve_service_name(&mut route, &*self.read().await?);
        }
        self.write(Op::CreateRoute(route)).await.map(|r| Response::new(redacted(r)))
    }

    async fn get_route(&self, request: Request<GetRequest>) -> Result<Response<Route>, Status> {
        let GetRequest { id_or_name: key, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let found = state.find_route(&key).ok_or_else(|| not_found("route", &key))?;
        Ok(Response::new(redacted(found.as_ref().clone())))
    }

    async fn list_routes(&self, request: Request<ListRequest>) -> Result<Response<ListRoutesResponse>, Status> {
        let state = self.read_with(request.into_inner().stale).await?;
        let mut routes: Vec<Route> = state.routes().map(|r| redacted(r.as_ref().clone())).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListRoutesResponse { routes }))
    }

    async fn update_route(&self, request: Request<Route>) -> Result<Response<Route>, Status> {
        let mut route = request.into_inner();
        let key = update_target(&route.meta, &route.name)?;
        let state = self.read().await?;
        let existing = state.find_route(&key).ok_or_else(|| not_found("route", &key))?;
        let read_revision = route.meta.as_ref().map_or(0, |m| m.revision);
        route.meta = Some(Meta { id: id_of(&existing.meta), ..Default::default() });
        route.resolve_backend_edit(existing, read_revision);
        normalize_route(&mut route)?;
        seal_jwt_secret(&self.proxy.shared.secrets, &mut route, existing.jwt.as_ref())?;
        resolve_service_name(&mut route, &state);
        self.write(Op::UpdateRoute(route)).await.map(|r| Response::new(redacted(r)))
    }

    async fn delete_route(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = self.route_id(&request.into_inner().id_or_name).await?;
        self.delete(Op::DeleteRoute(id)).await
    }

    async fn create_consumer(&self, request: Request<Consumer>) -> Result<Response<Consumer>, Status> {
        let mut consumer = request.into_inner();
        consumer.meta = fresh_meta();
        self.write(Op::CreateConsumer(consumer)).await.map(Response::new)
    }

    async fn get_consumer(&self, request: Request<GetRequest>) -> Result<Response<Consumer>, Status> {
        let GetRequest { id_or_name: key, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let found = state.find_consumer(&key).ok_or_else(|| not_found("consumer", &key))?;
        Ok(Response::new(found.as_ref().clone()))
    }

    async fn list_consumers(&self, request: Request<ListRequest>) -> Result<Response<ListConsumersResponse>, Status> {
        let state = self.read_with(request.into_inner().stale).await?;
        let mut consumers: Vec<Consumer> = state.consumers().map(|c| c.as_ref().clone()).collect();
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListConsumersResponse { consumers }))
    }

    async fn update_consumer(&self, request: Request<Consumer>) -> Result<Response<Consumer>, Status> {
        let mut consumer = request.into_inner();
        let key = update_target(&consumer.meta, &consumer.name)?;
        consumer.meta = Some(Meta { id: self.consumer_id(&key).await?, ..Default::default() });
        self.write(Op::UpdateConsumer(consumer)).await.map(Response::new)
    }

    async fn delete_consumer(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = self.consumer_id(&request.into_inner().id_or_name).await?;
        self.delete(Op::DeleteConsumer(id)).await
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let request = request.into_inner();
        required("consumer", &request.consumer)?;
        let consumer_id = self.consumer_id(&request.consumer).await?;
        let key = apikey::generate();
        let record = ApiKey {
            meta: Some(Meta { id: key.id.clone(), ..Default::default() }),
            consumer_id,
            name: request.name,
            secret_sha256: key.secret_sha256,
            display_prefix: key.display_prefix,
            expires_at_ms: request.expires_at_ms,
            disabled: false,
            allowed_models: request.allowed_models,
            preview: request.preview,
        };
        let api_key = shown_key(&self.write(Op::CreateApiKey(record)).await?);
        Ok(Response::new(CreateApiKeyResponse { api_key: Some(api_key), plaintext: key.plaintext }))
    }

    async fn get_api_key(&self, request: Request<GetRequest>) -> Result<Response<ApiKey>, Status> {
        let GetRequest { id_or_name: key, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let found = state.api_key(&key).ok_or_else(|| not_found("key", &key))?;
        Ok(Response::new(shown_key(found)))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let ListApiKeysRequest { consumer: filter, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let consumer_id = match filter.as_str() {
            "" => None,
            f => Some(state.find_consumer(f).map(|c| id_of(&c.meta)).ok_or_else(|| not_found("consumer", f))?),
        };
        let api_keys = state
            .api_keys()
            .filter(|k| consumer_id.as_ref().is_none_or(|c| &k.consumer_id == c))
            .map(|k| shown_key(k))
            .collect();
        Ok(Response::new(ListApiKeysResponse { api_keys }))
    }

    async fn update_api_key(&self, request: Request<UpdateApiKeyRequest>) -> Result<Response<ApiKey>, Status> {
        let update = request.into_inner();
        required("id", &update.id)?;
        let state = self.read().await?;
        let mut key = state.api_key(&update.id).ok_or_else(|| not_found("key", &update.id))?.as_ref().clone();
        if let Some(disabled) = update.disabled {
            key.disabled = disabled;
        }
        if let Some(expires) = update.expires_at_ms {
            key.expires_at_ms = expires;
        }
        if let Some(name) = update.name {
            key.name = name;
        }
        if let Some(preview) = update.preview {
            key.preview = preview;
        }
        if update.set_allowed_models {
            key.allowed_models = update.allowed_models;
        }
        self.write(Op::UpdateApiKey(key)).await.map(|k| Response::new(shown_key(&k)))
    }

    async fn delete_api_key(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let id = request.into_inner().id_or_name;
        required("id", &id)?;
        self.delete(Op::DeleteApiKey(id)).await
    }

    async fn put_entity(&self, request: Request<PutEntityRequest>) -> Result<Response<StoredEntity>, Status> {
        entities::put(&self.raft, &self.proxy, request.into_inner()).await.map(Response::new)
    }

    async fn get_entity(&self, request: Request<GetEntityRequest>) -> Result<Response<StoredEntity>, Status> {
        entities::get(&self.raft, request.into_inner()).await.map(Response::new)
    }

    async fn list_entities(
        &self,
        request: Request<ListEntitiesRequest>,
    ) -> Result<Response<ListEntitiesResponse>, Status> {
        entities::list(&self.raft, request.into_inner()).await.map(Response::new)
    }

    async fn delete_entity(&self, request: Request<DeleteEntityRequest>) -> Result<Response<DeleteResponse>, Status> {
        entities::delete(&self.raft, &self.proxy, request.into_inner()).await
    }

    async fn get_node_status(&self, _: Request<GetNodeStatusRequest>) -> Result<Response<NodeStatus>, Status> {
        let s = self.raft.status();
        Ok(Response::new(NodeStatus {
            node_id: s.node_id,
            role: s.role_text(),
            current_term: s.current_term,
            leader_id: s.leader_id,
            last_log_index: s.last_log_index,
            committed_index: s.committed_index,
            applied_index: s.applied_index,
            data_plane_index: self.proxy.served_revision(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}
