//! The profile-guided release build (scripts/build-pgo.sh) learns where the
//! time goes from loadtest/scenarios/pgo-training.sh. A training run that rots
//! (a renamed flag, a route that answers errors) would leave a profile of the
//! error paths, or none, and nothing else would notice: here it runs briefly
//! against this build, and every one of its load runs must succeed.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The script and everything it starts, in a process group of its own: when
/// dropped (a failed or timed-out test included) the whole group goes. SIGTERM
/// first, so the script's trap removes its temporary directory; SIGKILL if it
/// is still there after 10 s.
struct Training(Child);

impl Drop for Training {
    fn drop(&mut self) {
        let Some(group) = i32::try_from(self.0.id()).ok().and_then(rustix::process::Pid::from_raw) else {
            return;
        };
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let _ = self.0.wait();
    }
}

#[test]
fn the_pgo_training_run_drives_every_path_without_errors_and_stops_tollgate_cleanly() {
    let tollgate = Path::new(env!("CARGO_BIN_EXE_tollgate"));
    let load = tollgate.with_file_name("tollgate-load");
    assert!(
        load.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`, as scripts/test.sh does)",
        load.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../loadtest/scenarios/pgo-training.sh");
    let logs = tempfile::tempdir().unwrap();
    let stderr_path = logs.path().join("stderr");
    let mut training = Training(
        Command::new("bash")
            .arg(&script)
            .env("TG", tollgate)
            .env("LOAD", &load)
            // Every load run at its one-second floor: the paths matter here, not the counts.
            .env("SCALE", "0.01")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("bash runs"),
    );
    // Bounded below nextest's kill, so a hang reports what the script said.
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = training.0.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let status = status.unwrap_or_else(|| panic!("the training run did not finish in 150 s:\n{stderr}"));
    assert!(status.success(), "the training run failed ({status}):\n{stderr}");
    let runs: Vec<&str> = stderr.lines().filter_map(|line| line.strip_prefix("training: ")).collect();
    assert_eq!(
        runs,
        [
            "rest-key",
            "rest-open",
            "rest-jwt",
            "rest-cache",
            "rest-h2",
            "rest-tls",
            "ai-json",
            "ai-sse",
            "ai-anthropic",
            "ai-cross",
            "rest-key-after-writes",
            "done",
        ],
        "{stderr}"
    );
}
