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
