use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps a fresh machine free of an apt step; an explicit
    // PROTOC (e.g. a distro protoc) still wins.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/tollgate/config/v1/entities.proto",
        "proto/tollgate/raft/v1/command.proto",
        "proto/tollgate/admin/v1/admin.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("tollgate_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
