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

mod route_backend {
    use crate::config::v1::route::Backend;
    use crate::config::v1::{AiBackend, Route, ServiceBackend};

    impl Route {
        /// Moves the previous format's backend fields (`service_id`,
        /// `ai_gateway`) into `backend` and clears them, so that a route
        /// written by an older client or stored by an older version applies
        /// and serves exactly as before. A legacy field that is set wins: a
        /// client that sets it speaks the old format on purpose.
        ///
        /// Returns an error when both legacy fields are set, which named two
        /// backends at once.
        pub fn adopt_legacy_backend(&mut self) -> Result<(), &'static str> {
            match (self.ai_gateway, self.service_id.is_empty()) {
                (true, false) => {
                    return Err("an AI gateway route answers itself and forwards to no service; \
                                set backend to ai or to a service, not both");
                }
                (true, true) => self.backend = Some(Backend::Ai(AiBackend {})),
                (false, false) => {
                    self.backend =
                        Some(Backend::Service(ServiceBackend { service_id: std::mem::take(&mut self.service_id) }))
                }
                (false, true) => {}
            }
            self.ai_gateway = false;
            Ok(())
        }

        /// The service this route forwards to, if its backend is a service.
        pub fn backend_service_id(&self) -> Option<&str> {
            match &self.backend {
                Some(Backend::Service(s)) => Some(&s.service_id),
                _ => None,
            }
        }

        /// Whether the AI gateway serves this route.
        pub fn is_ai_backend(&self) -> bool {
            matches!(self.backend, Some(Backend::Ai(_)))
        }

        /// Sets the backend to forward to `service_id`.
        pub fn set_service_backend(&mut self, service_id: String) {
            self.backend = Some(Backend::Service(ServiceBackend { service_id }));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_previous_formats_backend_fields_become_the_oneof() {
            let mut ai = Route { ai_gateway: true, ..Default::default() };
            ai.adopt_legacy_backend().unwrap();
            assert!(ai.is_ai_backend());
            assert!(!ai.ai_gateway);

            let mut svc = Route { service_id: "s1".into(), ..Default::default() };
            svc.adopt_legacy_backend().unwrap();
            assert_eq!(svc.backend_service_id(), Some("s1"));
            assert!(svc.service_id.is_empty());

            // An old client that edits a fetched route's legacy field means it.
            let mut edited = svc.clone();
            edited.service_id = "s2".into();
            edited.adopt_legacy_backend().unwrap();
            assert_eq!(edited.backend_service_id(), Some("s2"));

            let mut both = Route { ai_gateway: true, service_id: "s".into(), ..Default::default() };
            assert!(both.adopt_legacy_backend().is_err());
        }

        #[test]
        fn a_route_encoded_in_the_previous_format_decodes_and_adopts() {
            use prost::Message;
            // Field 21 (ai_gateway) = true, as the previous version wrote it.
            let old = Route { name: "ai".into(), ai_gateway: true, ..Default::default() }.encode_to_vec();
            let mut decoded = Route::decode(old.as_slice()).unwrap();
            assert_eq!(decoded.backend, None);
            decoded.adopt_legacy_backend().unwrap();
            assert!(decoded.is_ai_backend());
        }
    }
}
