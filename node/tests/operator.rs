//! What an operator sees of whole `tollgate` processes: the log of a clean
//! cluster join (readable, no colour codes in a file), the start-up message,
//! a port already in use, `tollgate ctl` against a frozen or dying node, gRPC
//! reflection for standard tools, and the deploy files.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tollgate_proto::admin::v1::cluster_service_client::ClusterServiceClient;
use tollgate_proto::admin::v1::{CreateJoinTokenRequest, GetNodeStatusRequest, NodeRequest};
use tollgate_proto::config::v1::Consumer;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// Every TCP listener of a node on a port of its own choosing.
const ANY_PORTS: [&str; 8] = [
    "--proxy-listen",
    "127.0.0.1:0",
    "--admin-listen",
    "127.0.0.1:0",
    "--ops-listen",
    "127.0.0.1:0",
    "--console-listen",
    "127.0.0.1:0",
];

/// A node process; killed (even when stopped) when dropped.
struct Proc {
    child: Child,
    admin: SocketAddr,
    peer: String,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{name}");
    }
}

/// Starts `tollgate serve` on port 0 everywhere with stderr into `log` (a
/// file: not a terminal) and no `TOLLGATE_LOG`, so the defaults are what is
/// tested; waits until it wrote its endpoints.
async fn spawn(data_dir: &Path, log: &Path, args: &[&str]) -> Proc {
    let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(ANY_PORTS)
        .args(["--cluster-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("TOLLGATE_LOG")
        .env_remove("NO_COLOR")
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("tollgate starts");
    match wait_for_endpoints(data_dir, &mut child).await {
        Ok(json) => Proc {
            admin: json["admin"].as_str().unwrap().parse().unwrap(),
            peer: json["advertise"].as_str().unwrap().to_string(),
            log: log.to_path_buf(),
            child,
        },
        Err(NotReady::Exited(status)) => {
            panic!("tollgate exited during start-up ({status}):\n{}", std::fs::read_to_string(log).unwrap())
        }
        Err(NotReady::TimedOut) => {
            let _ = child.kill();
            panic!("tollgate did not become ready within 60 s; see {}", log.display())
        }
    }
}

/// Runs `tollgate ctl` against `admin`, killing it if it runs past `limit`.
async fn ctl_within(admin: SocketAddr, args: &[&str], limit: Duration) -> (Output, Duration) {
    let child = Command::new(BIN)
        .arg("ctl")
        .args(["--admin", &admin.to_string(), "--token", TOKEN])
        .args(args)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let started = Instant::now();
    let waiter = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    match tokio::time::timeout(limit, waiter).await {
        Ok(output) => (output.unwrap(), started.elapsed()),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("`tollgate ctl {}` still running after {limit:?}: it must give up by itself", args.join(" "));
        }
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_gives_up_on_a_frozen_node_and_names_a_node_that_dies_mid_request() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(&dir.path().join("data"), &dir.path().join("node.log"), &["--admin-token", TOKEN]).await;
    let addr = node.admin.to_string();

    node.signal("STOP");
    let (frozen, took) = ctl_within(node.admin, &["--timeout", "2s", "service", "list"], Duration::from_secs(20)).await;
    assert_eq!(frozen.status.code(), Some(7), "{}", stderr(&frozen));
    assert!(took < Duration::from_secs(8), "--timeout 2s took {took:?}");
    let text = stderr(&frozen);
    assert!(text.starts_with(&format!("error: {addr}: ")), "the message starts with the node's address: {text}");
    assert!(text.contains("--timeout"), "{text}");

    // The node dies while a call waits for it (its socket is reset).
    let admin = node.admin;
    let call = tokio::spawn(async move {
        ctl_within(admin, &["--timeout", "60s", "service", "list"], Duration::from_secs(50)).await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.signal("KILL");
    let (died, took) = call.await.unwrap();
    let text = stderr(&died);
    assert_eq!(died.status.code(), Some(7), "a node that dies mid-request is unreachable, not exit 1: {text}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    assert!(text.starts_with(&format!("error: {addr}: ")), "{text}");
    assert!(text.contains("Is `tollgate` running there?"), "{text}");
}

/// Joins `nodes` processes into one cluster (node 1 first), with small
/// snapshot settings so node 1 builds snapshots and the others install one.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_three_node_join_logs_a_few_readable_lines() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "[raft]\nheartbeat_ms = 100\nelection_timeout_min_ms = 600\nelection_timeout_max_ms = 1200\n\
         snapshot_after_logs = 20\nlogs_kept_after_snapshot = 5\n[proxy]\naccess_log = \"off\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let node = |id: u64| (dir.path().join(format!("node-{id}")), dir.path().join(format!("node-{id}.log")));

    let (data, log) = node(1);
    let first = spawn(&data, &log, &["--config", config, "--node-id", "1", "--admin-token", TOKEN]).await;
    let mut admin = admin_client(first.admin, TOKEN).await;
    for i in 0..45 {
        admin.create_consumer(Consumer { name: format!("c-{i}"), ..Default::default() }).await.unwrap();
    }
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", first.admin)).unwrap();
    let mut cluster = ClusterServiceClient::with_interceptor(channel.connect().await.unwrap(), Bearer(TOKEN.into()));

    let mut others = Vec::new();
    for id in [2u64, 3] {
        let token = cluster.create_join_token(CreateJoinTokenRequest { ttl_seconds: 600 }).await.unwrap();
        let token = token.into_inner().token;
        let (data, log) = node(id);
        let id_text = id.to_string();
        let args = ["--config", config, "--node-id", &id_text, "--admin-token", TOKEN];
        let joined = spawn(&data, &log, &[&args[..], &["--join", &first.peer, "--join-token", &token]].concat()).await;
        cluster.promote_voter(NodeRequest { node_id: id }).await.unwrap();
        others.push(joined);
    }
    let leader_index = admin.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner().applied_index;
    for joined in &others {
        let mut client = admin_client(joined.admin, TOKEN).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get_node_status(GetNodeStatusRequest {}).await.unwrap().into_inner().applied_index < leader_index {
            assert!(Instant::now() < deadline, "a joined node did not catch up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader_log = first.log_text();
    for (log, name) in [(&leader_log, "node 1"), (&others[0].log_text(), "node 2"), (&others[1].log_text(), "node 3")] {
        assert!(!log.contains("\x1b["), "{name} wrote colour codes into a file:\n{log}");
    }
    let warnings: Vec<&str> = leader_log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.len() < 3, "a clean join should not warn; the leader logged:\n{}", warnings.join("\n"));
    for expected in [
        "became the leader",
        "built a snapshot",
        "member 2 joined as a learner",
        "member 2 was promoted to voter",
        "member 3 joined as a learner",
        "member 3 was promoted to voter",
    ] {
        assert!(leader_log.contains(expected), "{expected:?} missing from the leader's log:\n{leader_log}");
    }
    let joined_log = others[0].log_text();
    for expected in ["node 1 is the leader", "installed a snapshot from the leader", "member 3 joined as a learner"] {
        assert!(joined_log.contains(expected), "{expected:?} missing from node 2's log:\n{joined_log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_start_message_gives_a_ctl_command_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("node.log");
    let stderr_file = std::fs::File::create(&log).unwrap();
    // A relative --data-dir, started in `dir`, as an operator would.
    let child = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--data-dir", "n1"])
        .args(ANY_PORTS)
        .args(["--cluster-listen", "127.0.0.1:0"])
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_DATA_DIR")
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .unwrap();
    let node = Proc { child, admin: "127.0.0.1:0".parse().unwrap(), peer: String::new(), log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !node.log_text().contains("admin token was generated") {
        assert!(Instant::now() < deadline, "no token message:\n{}", node.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = node.log_text();
    let command = text
        .split('`')
        .find(|part| part.starts_with("tollgate ctl "))
        .unwrap_or_else(|| panic!("no `tollgate ctl ...` command in the start message:\n{text}"));
    assert!(command.contains("--data-dir n1"), "ctl looks in ./tollgate-data unless told: {command}");

    // Exactly that, from the same directory, finds the node and its token.
    let words: Vec<&str> = command.split_whitespace().skip(1).collect();
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(&words)
        .env_remove("TOLLGATE_ADMIN_TOKEN")
        .env_remove("TOLLGATE_DATA_DIR")
        .env_remove("TOLLGATE_ADMIN")
        .output()
        .unwrap();
    assert!(output.status.success(), "`{command}` failed: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_is_reported_once_and_leaves_no_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("fresh");
    let output = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--proxy-listen", &port])
        .args(&ANY_PORTS[2..])
        .args(["--cluster-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.matches("in use").count(), 1, "said once:\n{text}");
    assert!(text.contains(&port) && text.contains("--proxy-listen"), "{text}");
    assert!(!data.exists(), "a failed first start leaves no empty data directory behind");

    // A busy peer (UDP) port is found before the CA or the database is made.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let output = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(ANY_PORTS)
        .args(["--cluster-listen", &port])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = stderr(&output);
    assert_eq!(text.matches("in use").count(), 1, "said once:\n{text}");
    assert!(text.contains(&port) && text.contains("--cluster-listen"), "{text}");
    assert!(!data.exists(), "a failed first start leaves no data directory behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_reflection_answers_v1_and_v1alpha() {
    use futures::StreamExt;
    use tonic_reflection::pb::{v1, v1alpha};

    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", node.admin_addr)).unwrap().connect().await.unwrap();

    // grpcio-reflection, Postman and older grpcurl speak only v1alpha.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = alpha.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let answer = answers.next().await.unwrap().unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "tollgate.admin.v1.AdminService"), "{names:?}");

    let mut current = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut answers = current.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    assert!(answers.next().await.unwrap().is_ok());
    node.shutdown().await;
}

/// The compose image and the systemd example listen where they say, on every
/// port the node uses: the ops port (/metrics, /readyz) was not exposed.
#[test]
fn deploy_files_expose_and_bind_every_listener() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("cluster/deploy");
    let dockerfile = std::fs::read_to_string(root.join("compose/Dockerfile")).unwrap();
    let compose = std::fs::read_to_string(root.join("compose/docker-compose.yml")).unwrap();
    let systemd = std::fs::read_to_string(root.join("systemd/tollgate.toml")).unwrap();
    let defaults = tollgate_node::Config::default();

    let exposed: Vec<&str> =
        dockerfile.lines().filter_map(|l| l.trim().strip_prefix("EXPOSE ")).flat_map(str::split_whitespace).collect();
    for (what, port, env) in [
        ("proxy", format!("{}", defaults.listen.proxy.port()), "TOLLGATE_PROXY_LISTEN"),
        ("admin", format!("{}", defaults.listen.admin.port()), "TOLLGATE_ADMIN_LISTEN"),
        ("ops", format!("{}", defaults.listen.ops.port()), "TOLLGATE_OPS_LISTEN"),
        ("console", format!("{}", defaults.listen.console.port()), "TOLLGATE_CONSOLE_LISTEN"),
        ("cluster", format!("{}/udp", defaults.listen.cluster.port()), "TOLLGATE_CLUSTER_LISTEN"),
    ] {
        assert!(exposed.contains(&port.as_str()), "the Dockerfile does not EXPOSE the {what} port {port}");
        let bound = format!("{env}=0.0.0.0:{}", port.trim_end_matches("/udp"));
        let bound_yaml = format!("{env}: 0.0.0.0:{}", port.trim_end_matches("/udp"));
        assert!(
            dockerfile.contains(&bound) || compose.contains(&bound_yaml),
            "the image listens on loopback for {what} unless {bound} is set"
        );
    }
    assert!(
        systemd.lines().any(|l| l.trim_start().starts_with("ops =")),
        "the systemd example leaves /metrics on loopback without saying so"
    );
}
