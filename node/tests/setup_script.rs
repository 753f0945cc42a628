//! `scripts/setup.sh` decides whether to install libclang by what bindgen
//! can actually load (issue 12 §1): a fresh Debian image ships only
//! `libclang-cpp.so.14`, which is not it.

use std::path::Path;
use std::process::Command;

/// Runs `tollgate_find_libclang <dir>` from scripts/lib/libclang.sh.
fn find_libclang(dir: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib/libclang.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#". "$1" && tollgate_find_libclang "$2""#)
        .arg("bash")
        .arg(&script)
        .arg(dir)
        .output()
        .expect("bash runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn dir_with(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in files {
        std::fs::write(dir.path().join(file), b"").unwrap();
    }
    dir
}

#[test]
fn libclang_cpp_alone_is_missing() {
    let dir = dir_with(&["libclang-cpp.so.14", "libclang-cpp.so"]);
    assert_eq!(find_libclang(dir.path()), (false, String::new()));
}

#[test]
fn every_name_bindgen_loads_is_found() {
    for name in ["libclang.so", "libclang.so.1", "libclang-14.so", "libclang-14.so.1", "libclang-16.0.6.so.16"] {
        let dir = dir_with(&["libclang-cpp.so.14", name]);
        let (found, path) = find_libclang(dir.path());
        assert!(found, "{name} was not found");
        assert!(path.ends_with(name), "{name}: printed {path}");
    }
}

#[test]
fn an_empty_or_missing_directory_is_missing() {
    let dir = dir_with(&[]);
    assert!(!find_libclang(dir.path()).0);
    assert!(!find_libclang(&dir.path().join("nope")).0);
}
