//! The `tollgate-cluster` command line against real one-node clusters: `up`
//! and `down` (or a signal) end with exit 0, `start` keeps a node's ports,
//! `status` answers while a node is frozen and marks it unreachable, and the
//! output is a table unless `-o json` is asked for. Every wait is bounded;
//! the only timing asserted is a generous one (8 s for a status call and a
//! `resume` issued during it, against the 15 s a status once held `up` for).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-cluster");

fn tollgate() -> PathBuf {
    let binary = tollgate_cluster::harness::default_binary();
    assert!(binary.exists(), "build the node first: cargo build --bin tollgate ({} is missing)", binary.display());
    binary
}

/// A running `tollgate-cluster up`; dropping it brings the cluster down.
struct Up {
    child: Option<Child>,
    dir: PathBuf,
}

impl Up {
    fn start(dir: &Path, nodes: usize) -> Up {
        let child = Command::new(BIN)
            .arg("--dir")
            .arg(dir)
            .args(["up", "-n", &nodes.to_string(), "--binary"])
            .arg(tollgate())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tollgate-cluster up starts");
        let mut up = Up { child: Some(child), dir: dir.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !dir.join("cluster.json").exists() {
            if let Ok(Some(status)) = up.child.as_mut().unwrap().try_wait() {
                let output = up.child.take().unwrap().wait_with_output().unwrap();
                panic!("up exited early ({status}): {}", String::from_utf8_lossy(&output.stderr));
            }
            assert!(Instant::now() < deadline, "the cluster did not come up within 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).arg("--dir").arg(&self.dir).args(args).output().expect("tollgate-cluster runs")
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        stdout(&out)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} -o json is not JSON ({e}): {text}"))
    }

    /// Waits (bounded) for `up` to exit and returns its output.
    fn wait(mut self) -> Output {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("up did not exit within 120 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new(BIN).arg("--dir").arg(&self.dir).arg("down").output();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn node(status: &Value, id: u64) -> Value {
    status["cluster"]["nodes"].as_array().unwrap().iter().find(|n| n["id"] == id).unwrap().clone()
}

#[test]
fn up_then_down_exits_zero_and_the_output_is_a_table_unless_json_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), 1);

    let table = up.ok(&["status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NODE") && lines[0].contains("STATE") && lines[0].contains("PROXY"), "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..2], ["1", "running"], "{table}");
    assert!(table.contains("partitions: none"), "{table}");
    assert!(table.lines().count() < 10, "a table, not pages of JSON: {table}");
    assert!(serde_json::from_str::<Value>(&table).is_err());

    let status = up.json(&["status"]);
    assert_eq!(status["ok"], true);
    assert_eq!(node(&status, 1)["state"], "running");
    assert_eq!(node(&status, 1)["reachable"], true);

    // An action prints one line saying what happened, then the table.
    let healed = up.ok(&["heal"]);
    assert_eq!(healed.lines().next(), Some("partition healed"), "{healed}");
    assert!(healed.lines().nth(1).unwrap().starts_with("NODE"), "{healed}");

    // A bad request is exit 1 with a message, not a backtrace.
    let bad = up.cli(&["kill", "7"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no node 7"), "{bad:?}");

    let down = up.cli(&["down"]);
    assert!(down.status.success(), "{down:?}");
    assert!(stdout(&down).contains("cluster stopped"), "{down:?}");
    let out = up.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "up after down: {stderr}");
    assert!(!stderr.contains("still in use") && !stderr.contains("backtrace"), "{stderr}");
    assert!(!dir.path().join("cluster.json").exists());
    let gone = Command::new(BIN).arg("--dir").arg(dir.path()).arg("status").output().unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("no running cluster"), "{gone:?}");
}

#[test]
fn up_exits_zero_on_ctrl_c_and_stops_its_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), 1);
    let pid = node(&up.json(&["status"]), 1)["pid"].as_u64().unwrap();
    let up_pid = up.child.as_ref().unwrap().id();
    assert!(Command::new("kill").args(["-INT", &up_pid.to_string()]).status().unwrap().success());
    let out = up.wait();
    assert_eq!(out.status.code(), Some(0), "up after Ctrl-C: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("cluster stopped"));
    // The node was stopped (and reaped) before `up` exited.
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "node process {pid} still exists");
}

#[test]
fn start_after_stop_or_kill_keeps_the_node_ports() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), 1);
    let ports = |status: &Value| {
        let n = node(status, 1);
        (n["proxy"].clone(), n["admin"].clone(), n["ops"].clone())
    };
    let before = ports(&up.json(&["status"]));

    let stopped = up.json(&["stop", "1"]);
    assert_eq!(node(&stopped, 1)["state"], "stopped");
    assert_eq!(ports(&stopped), before, "a stopped node still shows its addresses");
    let started = up.json(&["start", "1"]);
    assert_eq!(node(&started, 1)["state"], "running");
    assert_eq!(ports(&started), before, "start keeps the proxy, admin and ops ports");

    up.ok(&["kill", "1"]);
    let started = up.json(&["start", "1"]);
    assert_eq!(ports(&started), before, "start after kill keeps them too");
    assert_eq!(node(&started, 1)["reachable"], true, "{started:#}");
    // The address `up` printed serves again.
    let admin = before.1.as_str().unwrap();
    assert!(std::net::TcpStream::connect(admin).is_ok(), "admin {admin} is not listening");
}

#[test]
fn status_with_a_paused_node_returns_and_marks_it_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path(), 1);

    let paused = up.json(&["pause", "1"]);
    let n = node(&paused, 1);
    assert_eq!(n["state"], "paused");
    assert_eq!(n["reachable"], false, "{n:#}");
    assert!(n["error"].is_string(), "{n:#}");

    let table = up.ok(&["status"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let pid = n["pid"].to_string();
    assert_eq!(row[..4], ["1", "paused", pid.as_str(), "unreachable"], "{table}");
    assert!(table.contains("node 1: "), "the table says why: {table}");

    // `resume` is not stuck behind a status call in flight (which once held
    // the cluster for its whole 15 s), and the node answers again.
    let began = Instant::now();
    let mut status = Command::new(BIN)
        .arg("--dir")
        .arg(dir.path())
        .args(["status", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let resumed = up.json(&["resume", "1"]);
    assert_eq!(node(&resumed, 1)["state"], "running");
    while matches!(status.try_wait(), Ok(None)) && began.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = status.kill();
    let status = status.wait_with_output().unwrap();
    assert!(status.status.success(), "status: {}", String::from_utf8_lossy(&status.stderr));
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "status and resume took {:?}; resume waited for the status call",
        began.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while node(&up.json(&["status"]), 1)["reachable"] != true {
        assert!(Instant::now() < deadline, "node 1 did not answer again after resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    // `down` stops a node even while it is frozen.
    up.ok(&["pause", "1"]);
    assert!(up.cli(&["down"]).status.success());
    assert_eq!(up.wait().status.code(), Some(0));
}

/// SIGTERM while `up` is still starting its node: the node being launched
/// is stopped with it, not left running.
#[test]
fn an_interrupted_up_leaves_no_node_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("--dir")
        .arg(dir.path())
        .args(["up", "-n", "1", "--binary"])
        .arg(tollgate())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("node-1.log").exists() {
        assert!(Instant::now() < deadline, "up did not start node 1 within 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let running = |dir: &Path| -> Vec<String> {
        let needle = dir.join("node-1").to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok().map(|c| (e.file_name(), c)))
            .filter(|(_, cmdline)| String::from_utf8_lossy(cmdline).contains(&needle))
            .map(|(pid, _)| pid.to_string_lossy().into_owned())
            .collect()
    };
    assert!(!running(dir.path()).is_empty(), "node 1 is starting when the signal arrives");
    assert!(!dir.path().join("cluster.json").exists(), "up is still starting");
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    while matches!(child.try_wait(), Ok(None)) {
        assert!(Instant::now() < deadline, "up did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = running(dir.path());
    assert!(left.is_empty(), "node processes left running: {left:?}");
}
