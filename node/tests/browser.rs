//! The console and portal in a real browser: headless Chromium from the
//! Debian packages (`chromium`, `chromium-driver`, installed by
//! scripts/setup.sh), driven over WebDriver. A consumer signs in and
//! subscribes, an admin approves in the console, the consumer creates a
//! key, the key works through the proxy, and the usage chart shows it.
//! Screenshots go to `target/tmp/browser/` (or `$TOLLGATE_TEST_OUTPUT`).

mod common;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::web::{Api, governance};
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use tollgate_proto::config::v1::SubscriptionMode;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Chromium or its driver is missing: under CI (`CI` set) or with
/// `TOLLGATE_REQUIRE_BROWSER=1` the test fails; otherwise it skips, saying so.
fn browser_missing() -> bool {
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        return false;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    let required = ci || std::env::var("TOLLGATE_REQUIRE_BROWSER").as_deref() == Ok("1");
    let message = format!(
        "{CHROMIUM} or {CHROMEDRIVER} is missing; scripts/setup.sh installs them (apt-get install chromium chromium-driver)"
    );
    assert!(!required, "{message}; the browser test is required here (CI or TOLLGATE_REQUIRE_BROWSER=1)");
    println!("SKIPPED: {message}");
    eprintln!("SKIPPED: {message}");
    true
}

/// chromedriver on a run-time port, in a process group of its own: when
/// dropped (a test that fails included) the group goes, so no Chromium it
/// started outlives the test.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw);
        if let Some(group) = group {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromedriver did not listen on {port}");
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    let options = serde_json::json!({
        "binary": CHROMIUM,
        // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    capabilities.insert("goog:chromeOptions".into(), options);
    // chromedriver speaks plain HTTP on loopback: no TLS stack needed.
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

fn output_dir() -> PathBuf {
    let dir = std::env::var_os("TOLLGATE_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
        .join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(output_dir().join(format!("{name}.png")), png).unwrap();
}

/// The element `css` finds once the page shows it; on failure, the page's
/// screenshot and source are written beside the others.
async fn find(client: &Client, css: &str) -> fantoccini::elements::Element {
    match client.wait().at_most(Duration::from_secs(10)).for_element(Locator::Css(css)).await {
        Ok(element) => element,
        Err(error) => {
            screenshot(client, "failed").await;
            let source = client.source().await.unwrap_or_default();
            std::fs::write(output_dir().join("failed.html"), &source).unwrap();
            panic!("no {css:?} on {:?}: {error}", client.current_url().await.map(|u| u.to_string()));
        }
    }
}

async fn text_of(client: &Client, css: &str) -> String {
    find(client, css).await.text().await.unwrap()
}

/// Waits until the element `css` says `needle` (a click's navigation may
/// still be on its way).
async fn wait_for_text(client: &Client, css: &str, needle: &str) {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(needle) {
                return;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    screenshot(client, "failed").await;
    panic!("{css:?} never said {needle:?}; it said {last:?}");
}

/// Clicks what `locator` finds, again if the page was replaced between
/// finding and clicking (the previous click's navigation).
async fn click(client: &Client, locator: Locator<'_>) {
    for _ in 0..100 {
        if let Ok(element) = client.find(locator).await
            && element.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    screenshot(client, "failed").await;
    panic!("could not click {locator:?}");
}

async fn fill_and_submit(client: &Client, field: &str, value: &str, button: &str) {
    find(client, field).await.send_keys(value).await.unwrap();
    click(client, Locator::Css(button)).await;
}

#[tokio::test]
async fn subscribe_approve_call_and_see_usage_in_a_real_browser() {
    if browser_missing() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let upstream = Upstream::start("orders").await;
    let mut admin = admin_client(node.admin_addr, TOKEN).await;
    let mut gov = governance(node.admin_addr, TOKEN).await;
    let openapi = "openapi: 3.0.3\ninfo: {title: Orders, version: '1'}\npaths:\n  /orders:\n    get:\n      summary: List orders\n      responses:\n        '200': {description: the orders}\n";
    let api = Api {
        name: "orders",
        path: "/orders",
        upstream: upstream.addr,
        mode: SubscriptionMode::Approval,
        openapi,
        publish: true,
    };
    api.create(&mut admin, &mut gov).await;
    let (_, key) = consumer_with_key(&mut admin, "shop").await;
    let base = format!("http://{}", node.console_addr);

    let driver = driver().await;
    let client = browser(&driver).await;

    // The consumer signs in with its key, finds the API and subscribes.
    client.goto(&format!("{base}/portal")).await.unwrap();
    fill_and_submit(&client, "#secret", &key, "#signin").await;
    wait_for_text(&client, "header", "shop").await;
    fill_and_submit(&client, "input[name=q]", "orders", "form[role=search] button").await;
    click(&client, Locator::LinkText("orders")).await;
    click(&client, Locator::Css("#subscribe")).await;
    wait_for_text(&client, "#subscription-state", "pending").await;
    screenshot(&client, "1-portal-subscription-pending").await;
    // The reference, rendered from the OpenAPI document.
    click(&client, Locator::LinkText("v1")).await;
    wait_for_text(&client, "main", "List orders").await;
    screenshot(&client, "2-portal-reference").await;

    // The key does not open the API yet.
    let bearer = format!("Bearer {key}");
    assert_eq!(get(node.proxy_addr, "/orders/1", &[("authorization", &bearer)]).await.status, 403);

    // An admin approves it in the console.
    client.goto(&format!("{base}/console")).await.unwrap();
    fill_and_submit(&client, "#secret", TOKEN, "#signin").await;
    wait_for_text(&client, "header", "bootstrap (admin)").await;
    client.goto(&format!("{base}/console/subscriptions")).await.unwrap();
    screenshot(&client, "3-console-pending").await;
    click(&client, Locator::Css("#subscription-shop button.approve")).await;
    wait_for_text(&client, "#subscription-shop", "approved").await;
    screenshot(&client, "4-console-approved").await;

    // The consumer sees it approved and makes a key of its own.
    client.goto(&format!("{base}/portal/apis/orders")).await.unwrap();
    wait_for_text(&client, "#subscription-state", "approved").await;
    client.goto(&format!("{base}/portal/keys")).await.unwrap();
    fill_and_submit(&client, "#key-name", "browser", "#create-key").await;
    let new_key = text_of(&client, "#new-key").await.trim().to_string();
    assert!(new_key.starts_with("tg_"), "{new_key}");
    screenshot(&client, "5-portal-new-key").await;

    // The key works through the proxy.
    let bearer = format!("Bearer {new_key}");
    for _ in 0..5 {
        assert_eq!(get(node.proxy_addr, "/orders/1", &[("authorization", &bearer)]).await.status, 200);
    }

    // Usage reaches the cluster's counters (flushed each second) and the chart.
    let mut bars = 0;
    for _ in 0..100 {
        client.goto(&format!("{base}/portal/usage?span=hours")).await.unwrap();
        bars = client.find_all(Locator::Css("#requests-api rect.bar")).await.unwrap().len();
        if bars > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bars > 0, "the usage chart shows the requests");
    let legend = text_of(&client, "#requests-api .legend").await;
    assert!(legend.contains("orders"), "{legend}");
    screenshot(&client, "6-portal-usage").await;

    // Signing out ends the session.
    client.goto(&format!("{base}/portal")).await.unwrap();
    click(&client, Locator::Css("#signout")).await;
    client.goto(&format!("{base}/portal/keys")).await.unwrap();
    assert!(client.current_url().await.unwrap().path().ends_with("/portal/signin"));

    client.close().await.unwrap();
    node.shutdown().await;
}
