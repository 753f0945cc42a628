//! Protobuf definitions shared by every Tollgate crate: the replicated entities
//! (`config`), the Raft command payload (`raft`) and the admin gRPC API (`admin`).

pub mod config {
    pub mod v1 {
        tonic::include_proto!("tollgate.config.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("tollgate.raft.v1");
    }
}

pub mod admin {
    pub mod v1 {
        tonic::include_proto!("tollgate.admin.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Tollgate proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");

pub mod limits;
pub mod prompt;

mod route_backend {
    use crate::config::v1::route::Backend;
    use crate::config::v1::{AiBackend, Route, ServiceBackend};

    impl Route {
        /// Reconciles the two formats of a route's backend and keeps both.
        ///
        /// The previous version named the backend in `service_id` /
        /// `ai_gateway`; this one in `backend`. A route that has no
        /// `backend` (from an older client, an older node's log entry or
        /// stored record) takes it from the legacy fields. Then the legacy
        /// fields are set to mirror `backend`, so that nodes and clients of
        /// the previous version, which do not know `backend`, read the same
        /// route during a rolling upgrade (their decoder drops the unknown
        /// field; without the mirror they would see a route with no backend).
        ///
        /// Errors when the legacy fields name two backends at once, or a
        /// different backend than `backend` does.
        pub fn adopt_legacy_backend(&mut self) -> Result<(), &'static str> {
            match (&self.backend, self.legacy_backend()?) {
                (None, legacy) => self.backend = legacy,
                (Some(backend), Some(legacy)) if *backend != legacy => {
                    return Err("service_id / ai_gateway (the previous format) name a different backend than \
                                backend does; set one of them");
                }
                _ => {}
            }
            self.mirror_legacy_backend();
            Ok(())
        }

        /// For an update of `stored` by a client that read it at `read_revision`
        /// (the `meta.revision` it sent back): when the request's `backend`
        /// and legacy fields name different backends, keeps the one the
        /// client edited. That is knowable only against the version the
        /// client read, so a request from another revision (a retry after
        /// its own write, a blind write) is left as it is, and `apply`
        /// refuses the disagreement instead of guessing. A client of the
        /// previous version sends no `backend`: its legacy fields are taken
        /// as they are by [`Route::adopt_legacy_backend`].
        pub fn resolve_backend_edit(&mut self, stored: &Route, read_revision: u64) {
            let Some(backend) = &self.backend else { return };
            match self.legacy_backend() {
                Ok(Some(legacy)) if legacy != *backend => {}
                _ => return,
            }
            let stored_revision = stored.meta.as_ref().map_or(0, |m| m.revision);
            if read_revision == 0 || read_revision != stored_revision {
                return;
            }
            let mut mirror = stored.clone();
            mirror.mirror_legacy_backend();
            let legacy_edited = self.service_id != mirror.service_id || self.ai_gateway != mirror.ai_gateway;
            if self.backend == stored.backend && legacy_edited {
                self.backend = None;
            } else if self.backend != stored.backend && !legacy_edited {
                self.service_id.clear();
                self.ai_gateway = false;
            }
        }

        /// Sets the backend to the AI gateway (and its legacy mirror).
        pub fn set_ai_backend(&mut self) {
            self.backend = Some(Backend::Ai(AiBackend {}));
            self.mirror_legacy_backend();
        }

        /// The backend the legacy fields name, if any.
        fn legacy_backend(&self) -> Result<Option<Backend>, &'static str> {
            match (self.ai_gateway, self.service_id.is_empty()) {
                (true, false) => Err("an AI gateway route answers itself and forwards to no service; \
                                      set backend to ai or to a service, not both"),
                (true, true) => Ok(Some(Backend::Ai(AiBackend {}))),
                (false, false) => Ok(Some(Backend::Service(ServiceBackend { service_id: self.service_id.clone() }))),
                (false, true) => Ok(None),
            }
        }

        fn mirror_legacy_backend(&mut self) {
            (self.service_id, self.ai_gateway) = match &self.backend {
                Some(Backend::Service(s)) => (s.service_id.clone(), false),
                Some(Backend::Ai(_)) => (String::new(), true),
                // The previous version knows no MCP backend: it reads none.
                Some(Backend::Mcp(_)) | None => (String::new(), false),
            };
        }

        /// The service this route forwards to, if its backend is a service.
        pub fn backend_service_id(&self) -> Option<&str> {
            match &self.backend {
                Some(Backend::Service(s)) => Some(&s.service_id),
                _ => None,
            }
        }

        /// The MCP server's settings, if this route serves one.
        pub fn mcp_backend(&self) -> Option<&crate::config::v1::McpBackend> {
            match &self.backend {
                Some(Backend::Mcp(m)) => Some(m),
                _ => None,
            }
        }

        /// Whether the AI gateway serves this route.
        pub fn is_ai_backend(&self) -> bool {
            matches!(self.backend, Some(Backend::Ai(_)))
        }

        /// Sets the backend to forward to `service_id` (and its legacy mirror).
        pub fn set_service_backend(&mut self, service_id: String) {
            self.backend = Some(Backend::Service(ServiceBackend { service_id }));
            self.mirror_legacy_backend();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_previous_formats_backend_fields_become_the_oneof_and_stay_as_its_mirror() {
            let mut ai = Route { ai_gateway: true, ..Default::default() };
            ai.adopt_legacy_backend().unwrap();
            assert!(ai.is_ai_backend());
            assert!(ai.ai_gateway, "kept for nodes of the previous version");

            let mut svc = Route { service_id: "s1".into(), ..Default::default() };
            svc.adopt_legacy_backend().unwrap();
            assert_eq!(svc.backend_service_id(), Some("s1"));
            assert_eq!(svc.service_id, "s1");

            let mut current = Route::default();
            current.set_service_backend("s2".into());
            current.adopt_legacy_backend().unwrap();
            assert_eq!((current.backend_service_id(), current.service_id.as_str()), (Some("s2"), "s2"));

            let mut both = Route { ai_gateway: true, service_id: "s".into(), ..Default::default() };
            assert!(both.adopt_legacy_backend().is_err());
            let mut disagree =
                Route { service_id: "s1".into(), backend: Some(Backend::Ai(AiBackend {})), ..Default::default() };
            assert!(disagree.adopt_legacy_backend().is_err());
        }

        #[test]
        fn an_update_keeps_the_format_the_client_edited_in_the_version_it_read() {
            let mut stored = Route {
                meta: Some(crate::config::v1::Meta { revision: 7, ..Default::default() }),
                ..Default::default()
            };
            stored.set_service_backend("a".into());
            let edit = |change: &dyn Fn(&mut Route), read_revision: u64| {
                let mut request = stored.clone();
                change(&mut request);
                request.resolve_backend_edit(&stored, read_revision);
                request.adopt_legacy_backend().map(|()| request.backend_service_id().map(str::to_string))
            };
            // A current client that edited only the legacy mirror.
            assert_eq!(edit(&|r| r.service_id = "b".into(), 7), Ok(Some("b".into())));
            // A current client that edited `backend` and left the mirror stale.
            assert_eq!(edit(&|r| r.backend = Some(Backend::Ai(AiBackend {})), 7), Ok(None));
            // The same requests from another revision (a retry after they
            // committed, or a blind write) are refused, never guessed.
            assert!(edit(&|r| r.service_id = "b".into(), 8).is_err());
            assert!(edit(&|r| r.backend = Some(Backend::Ai(AiBackend {})), 0).is_err());
            // Consistent requests pass whatever revision they carry.
            assert_eq!(edit(&|r| r.set_service_backend("c".into()), 0), Ok(Some("c".into())));
            assert_eq!(edit(&|r| r.priority = 5, 3), Ok(Some("a".into())));

            // A client of the previous version: no `backend`, the legacy
            // fields as it read them (unchanged, or edited).
            let old_client = |service_id: &str| {
                let mut request = Route { service_id: service_id.into(), priority: 5, ..Default::default() };
                request.resolve_backend_edit(&stored, 0);
                request.adopt_legacy_backend().map(|()| request.backend_service_id().map(str::to_string))
            };
            assert_eq!(old_client("a"), Ok(Some("a".into())));
            assert_eq!(old_client("c"), Ok(Some("c".into())));
        }

        #[test]
        fn a_route_in_the_current_format_is_readable_by_a_previous_version() {
            use prost::Message;
            // What the previous version's generated type knew of a route.
            #[derive(Clone, PartialEq, prost::Message)]
            struct PreviousRoute {
                #[prost(string, tag = "2")]
                name: String,
                #[prost(string, tag = "8")]
                service_id: String,
                #[prost(bool, tag = "21")]
                ai_gateway: bool,
            }
            let mut route = Route { name: "r".into(), ..Default::default() };
            route.set_service_backend("s1".into());
            let seen = PreviousRoute::decode(route.encode_to_vec().as_slice()).unwrap();
            assert_eq!((seen.service_id.as_str(), seen.ai_gateway), ("s1", false));

            let mut ai = Route { name: "a".into(), backend: Some(Backend::Ai(AiBackend {})), ..Default::default() };
            ai.adopt_legacy_backend().unwrap();
            let seen = PreviousRoute::decode(ai.encode_to_vec().as_slice()).unwrap();
            assert!(seen.ai_gateway && seen.service_id.is_empty());

            // And a route the previous version wrote reads in the current form.
            let old = PreviousRoute { name: "o".into(), service_id: String::new(), ai_gateway: true }.encode_to_vec();
            let mut decoded = Route::decode(old.as_slice()).unwrap();
            decoded.adopt_legacy_backend().unwrap();
            assert!(decoded.is_ai_backend());
        }
    }
}
