//! `tollgate.admin.v1.AiService`: providers (secrets sealed here, before they
//! are proposed), model aliases, price overrides, and this node's usage ledger.

use std::sync::Arc;

use prost::Message;
use tollgate_llm::catalog::Catalog;
use tollgate_proto::admin::v1::ai_service_server::AiService;
use tollgate_proto::admin::v1::*;
use tollgate_proto::config::v1::{Meta, ModelAlias, ModelPrice, Provider};
use tollgate_proto::raft::v1::command::Op;
use tollgate_raft::secrets::{SecretBox, credential_context, provider_header_context};
use tollgate_raft::{GatewayState, RaftNode, provider_header_value};
use tonic::{Request, Response, Status};

use super::service::{fresh_meta, id_of, not_found, required, update_target};
use super::{propose, status};
use crate::ai::pricing::model_price;
use crate::proxy::ProxyContext;
use crate::usage::{LedgerError, UsageLedger};

pub struct Ai {
    raft: RaftNode,
    proxy: Arc<ProxyContext>,
    secrets: SecretBox,
    ledger: Arc<UsageLedger>,
}

impl Ai {
    pub fn new(raft: RaftNode, proxy: Arc<ProxyContext>, secrets: SecretBox, ledger: Arc<UsageLedger>) -> Ai {
        Ai { raft, proxy, secrets, ledger }
    }

    async fn write<T: Message + Default>(&self, op: Op) -> Result<T, Status> {
        propose::write(&self.raft, &self.proxy, op).await
    }

    async fn delete(&self, op: Op) -> Result<Response<DeleteResponse>, Status> {
        propose::delete(&self.raft, &self.proxy, op).await
    }

    async fn read_with(&self, stale: bool) -> Result<Arc<GatewayState>, Status> {
        propose::read(&self.raft, stale).await
    }

    /// Alias targets may name providers; the stored form is the id.
    fn resolve_targets(state: &GatewayState, alias: &mut ModelAlias) -> Result<(), Status> {
        for t in &mut alias.targets {
            required("targets[].provider_id", &t.provider_id)?;
            let p = state.find_provider(&t.provider_id).ok_or_else(|| not_found("provider", &t.provider_id))?;
            t.provider_id = id_of(&p.meta);
        }
        Ok(())
    }
}

/// Seals every credential that carries a plaintext secret; one without a
/// secret keeps the sealed secret of the existing credential with its id.
pub(super) fn seal_credentials(
    secrets: &SecretBox,
    provider: &mut Provider,
    existing: Option<&Provider>,
) -> Result<(), Status> {
    let provider_id = id_of(&provider.meta);
    for c in &mut provider.credentials {
        required("credentials[].id", &c.id)?;
        if c.secret.is_empty() {
            let kept = existing
                .and_then(|p| p.credentials.iter().find(|old| old.id == c.id))
                .filter(|old| !old.sealed_secret.is_empty());
            match kept {
                Some(old) => {
                    c.sealed_secret = old.sealed_secret.clone();
                    c.hint = old.hint.clone();
                }
                None => {
                    return Err(Status::invalid_argument(format!(
                        "credential {:?} has no secret; give one (e.g. `--key {}=env:OPENAI_API_KEY`)",
                        c.id, c.id
                    )));
                }
            }
            continue;
        }
        let secret = std::mem::take(&mut c.secret);
        c.sealed_secret = secrets
            .seal(&credential_context(&provider_id, &c.id), &secret)
            .map_err(|e| Status::internal(e.to_string()))?;
        c.hint = hint(&secret);
    }
    Ok(())
}

/// Seals every header value sent in plain text, so the Raft log,
/// snapshots and RocksDB only hold ciphertext. A header sent by name
/// without a value keeps its current one (sealed now if an earlier
/// version stored it in plain text): a get-modify-update round trip only
/// sees hints, and must not wipe the values.
pub(super) fn seal_headers(
    secrets: &SecretBox,
    provider: &mut Provider,
    existing: Option<&Provider>,
) -> Result<(), Status> {
    let provider_id = id_of(&provider.meta);
    for (i, h) in provider.headers.iter_mut().enumerate() {
        required("headers[].name", &h.name)?;
        h.name = h.name.to_ascii_lowercase();
        // Only this server seals; ciphertext sent by a client is not trusted.
        h.sealed_value.clear();
        let value = if h.value.is_empty() {
            let current = existing.and_then(|p| p.headers.iter().find(|old| old.name.eq_ignore_ascii_case(&h.name)));
            match current {
                Some(old) if !old.sealed_value.is_empty() => {
                    h.sealed_value = old.sealed_value.clone();
                    h.hint = old.hint.clone();
                    continue;
                }
                Some(old) => old.value.clone(),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "header {:?} has no value; give one (e.g. `--header {}:VALUE`)",
                        h.name, h.name
                    )));
                }
            }
        } else {
            std::mem::take(&mut h.value)
        };
        // Apply only ever sees the ciphertext: the plaintext is checked here.
        provider_header_value(&format!("headers[{i}]"), &value).map_err(status::from_apply)?;
        h.sealed_value = secrets
            .seal(&provider_header_context(&provider_id, &h.name), &value)
            .map_err(|e| Status::internal(e.to_string()))?;
        h.hint = hint(&value);
    }
    Ok(())
}

/// The last four characters, enough to tell keys apart, never enough to use one.
fn hint(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "…".into();
    }
    format!("…{}", chars[chars.len() - 4..].iter().collect::<String>())
}

/// What the API returns: never a secret, sealed or not; header values only
/// as a hint.
fn redacted(mut p: Provider) -> Provider {
    for c in &mut p.credentials {
        c.sealed_secret.clear();
        c.secret.clear();
    }
    for h in &mut p.headers {
        // Stored in plain text by an earlier version: it has no hint yet.
        if h.sealed_value.is_empty() && h.hint.is_empty() {
            h.hint = hint(&h.value);
        }
        h.value.clear();
        h.sealed_value.clear();
    }
    p
}

#[tonic::async_trait]
impl AiService for Ai {
    async fn create_provider(&self, request: Request<Provider>) -> Result<Response<Provider>, Status> {
        let mut provider = request.into_inner();
        provider.meta = fresh_meta();
        seal_credentials(&self.secrets, &mut provider, None)?;
        seal_headers(&self.secrets, &mut provider, None)?;
        let created: Provider = self.write(Op::CreateProvider(provider)).await?;
        Ok(Response::new(redacted(created)))
    }

    async fn get_provider(&self, request: Request<GetRequest>) -> Result<Response<Provider>, Status> {
        let GetRequest { id_or_name, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let p = state.find_provider(&id_or_name).ok_or_else(|| not_found("provider", &id_or_name))?;
        Ok(Response::new(redacted(p.as_ref().clone())))
    }

    async fn list_providers(&self, request: Request<ListRequest>) -> Result<Response<ListProvidersResponse>, Status> {
        let state = self.read_with(request.into_inner().stale).await?;
        let mut providers: Vec<Provider> = state.providers().map(|p| redacted(p.as_ref().clone())).collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListProvidersResponse { providers }))
    }

    async fn update_provider(&self, request: Request<Provider>) -> Result<Response<Provider>, Status> {
        let mut provider = request.into_inner();
        let key = update_target(&provider.meta, &provider.name)?;
        let state = self.read_with(false).await?;
        let existing = state.find_provider(&key).ok_or_else(|| not_found("provider", &key))?;
        provider.meta = Some(Meta { id: id_of(&existing.meta), ..Default::default() });
        seal_credentials(&self.secrets, &mut provider, Some(existing))?;
        seal_headers(&self.secrets, &mut provider, Some(existing))?;
        let updated: Provider = self.write(Op::UpdateProvider(provider)).await?;
        Ok(Response::new(redacted(updated)))
    }

    async fn delete_provider(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().id_or_name;
        let state = self.read_with(false).await?;
        let id = state.find_provider(&key).map(|p| id_of(&p.meta)).ok_or_else(|| not_found("provider", &key))?;
        self.delete(Op::DeleteProvider(id)).await
    }

    async fn create_model_alias(&self, request: Request<ModelAlias>) -> Result<Response<ModelAlias>, Status> {
        let mut alias = request.into_inner();
        alias.meta = fresh_meta();
        Ai::resolve_targets(&*self.read_with(false).await?, &mut alias)?;
        self.write(Op::CreateModelAlias(alias)).await.map(Response::new)
    }

    async fn get_model_alias(&self, request: Request<GetRequest>) -> Result<Response<ModelAlias>, Status> {
        let GetRequest { id_or_name, stale } = request.into_inner();
        let state = self.read_with(stale).await?;
        let a = state.find_model_alias(&id_or_name).ok_or_else(|| not_found("alias", &id_or_name))?;
        Ok(Response::new(a.as_ref().clone()))
    }

    async fn list_model_aliases(
        &self,
        request: Request<ListRequest>,
    ) -> Result<Response<ListModelAliasesResponse>, Status> {
        let state = self.read_with(request.into_inner().stale).await?;
        let mut aliases: Vec<ModelAlias> = state.model_aliases().map(|a| a.as_ref().clone()).collect();
        aliases.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(ListModelAliasesResponse { aliases }))
    }

    async fn update_model_alias(&self, request: Request<ModelAlias>) -> Result<Response<ModelAlias>, Status> {
        let mut alias = request.into_inner();
        let key = update_target(&alias.meta, &alias.name)?;
        let state = self.read_with(false).await?;
        let existing = state.find_model_alias(&key).ok_or_else(|| not_found("alias", &key))?;
        alias.meta = Some(Meta { id: id_of(&existing.meta), ..Default::default() });
        Ai::resolve_targets(&state, &mut alias)?;
        self.write(Op::UpdateModelAlias(alias)).await.map(Response::new)
    }

    async fn delete_model_alias(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().id_or_name;
        let state = self.read_with(false).await?;
        let id = state.find_model_alias(&key).map(|a| id_of(&a.meta)).ok_or_else(|| not_found("alias", &key))?;
        self.delete(Op::DeleteModelAlias(id)).await
    }

    async fn put_model_price(&self, request: Request<ModelPrice>) -> Result<Response<ModelPrice>, Status> {
        let mut price = request.into_inner();
        required("name", &price.name)?;
        price.meta = fresh_meta();
        self.write(Op::PutModelPrice(price)).await.map(Response::new)
    }

    async fn list_model_prices(
        &self,
        request: Request<ListModelPricesRequest>,
    ) -> Result<Response<ListModelPricesResponse>, Status> {
        let ListModelPricesRequest { pricing, contains } = request.into_inner();
        let state = self.read_with(false).await?;
        let catalog = Catalog::builtin();
        let wanted = |name: &str| {
            let (namespace, model) = name.split_once('/').unwrap_or(("", name));
            (pricing.is_empty() || namespace == pricing) && (contains.is_empty() || model.contains(&contains))
        };
        let mut models: Vec<PricedModel> = state
            .model_prices()
            .filter(|p| wanted(&p.name))
            .map(|p| PricedModel {
                source: format!("override {}", p.meta.as_ref().map_or(0, |m| m.revision)),
                price: Some(p.as_ref().clone()),
            })
            .collect();
        models.extend(
            catalog
                .entries()
                .filter(|p| wanted(&p.name) && state.find_model_price(&p.name).is_none())
                .map(|p| PricedModel { source: format!("catalog {}", catalog.revision), price: Some(model_price(p)) }),
        );
        models.sort_by(|a, b| {
            let name = |m: &PricedModel| m.price.as_ref().map(|p| p.name.clone()).unwrap_or_default();
            name(a).cmp(&name(b))
        });
        Ok(Response::new(ListModelPricesResponse { models, catalog_revision: catalog.revision.clone() }))
    }

    async fn delete_model_price(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().id_or_name;
        let state = self.read_with(false).await?;
        let id = state.find_model_price(&key).map(|p| id_of(&p.meta)).ok_or_else(|| {
            Status::not_found(format!(
                "no price override {key:?}; built-in catalog prices cannot be deleted, only overridden"
            ))
        })?;
        self.delete(Op::DeleteModelPrice(id)).await
    }

    async fn get_usage(&self, request: Request<GetUsageRequest>) -> Result<Response<UsageReport>, Status> {
        let GetUsageRequest { from_ms, to_ms, group_by } = request.into_inner();
        let to_ms = if to_ms == 0 { i64::MAX } else { to_ms };
        let ledger = self.ledger.clone();
        let group = group_by.clone();
        let rows = tokio::task::spawn_blocking(move || ledger.report(from_ms, to_ms, &group))
            .await
            .map_err(|e| Status::internal(format!("usage query failed: {e}")))?
            .map_err(|e| match e {
                LedgerError::UnknownGroup(_) => Status::invalid_argument(e.to_string()),
                other => Status::internal(other.to_string()),
            })?;
        Ok(Response::new(UsageReport { node_id: self.raft.status().node_id, group_by, rows }))
    }
}

#[cfg(test)]
mod tests {
    use tollgate_proto::config::v1::ProviderHeader;

    use super::*;

    fn header(name: &str, value: &str) -> ProviderHeader {
        ProviderHeader { name: name.into(), value: value.into(), ..Default::default() }
    }

    fn provider(headers: Vec<ProviderHeader>) -> Provider {
        Provider { meta: Some(Meta { id: "p1".into(), ..Default::default() }), headers, ..Default::default() }
    }

    #[test]
    fn header_values_are_sealed_and_only_a_hint_is_returned() {
        let secrets = SecretBox::from_key_material(b"cluster");
        let mut p = provider(vec![header("X-Portkey-Api-Key", "pk-live-0123456789abcd")]);
        seal_headers(&secrets, &mut p, None).unwrap();
        let h = &p.headers[0];
        assert_eq!(h.name, "x-portkey-api-key", "names are stored lower case");
        assert!(h.value.is_empty(), "the plaintext is never proposed");
        assert_eq!(h.hint, "…abcd");
        let context = provider_header_context("p1", "x-portkey-api-key");
        assert_eq!(secrets.open(&context, &h.sealed_value).unwrap(), "pk-live-0123456789abcd");
        assert!(!h.sealed_value.windows(7).any(|w| w == b"pk-live"), "ciphertext, not the value");

        let shown = redacted(p.clone());
        assert!(shown.headers[0].sealed_value.is_empty() && shown.headers[0].value.is_empty());
        assert_eq!((shown.headers[0].name.as_str(), shown.headers[0].hint.as_str()), ("x-portkey-api-key", "…abcd"));
    }

    #[test]
    fn an_update_without_values_keeps_them_and_seals_legacy_plain_text() {
        let secrets = SecretBox::from_key_material(b"cluster");
        let mut existing = provider(vec![header("x-a", "value-a-0123456789")]);
        seal_headers(&secrets, &mut existing, None).unwrap();
        // An earlier version stored this one in plain text.
        existing.headers.push(header("x-legacy", "legacy-value-0123"));
        assert_eq!(redacted(existing.clone()).headers[1].hint, "…0123", "legacy values get a hint too");

        // What `ctl provider update` sends back: names and hints from a get.
        let mut update = redacted(existing.clone());
        seal_headers(&secrets, &mut update, Some(&existing)).unwrap();
        assert_eq!(update.headers[0].sealed_value, existing.headers[0].sealed_value, "kept as it was");
        assert!(update.headers[1].value.is_empty(), "the legacy value is sealed now");
        let context = provider_header_context("p1", "x-legacy");
        assert_eq!(secrets.open(&context, &update.headers[1].sealed_value).unwrap(), "legacy-value-0123");

        // A new value replaces; ciphertext from a client is never trusted.
        let mut forged = provider(vec![ProviderHeader { sealed_value: vec![1; 40], ..header("x-a", "") }]);
        let error = seal_headers(&secrets, &mut forged, None).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().contains("has no value"), "{}", error.message());
        let mut control = provider(vec![header("x-a", "bad\nvalue")]);
        assert_eq!(seal_headers(&secrets, &mut control, None).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
