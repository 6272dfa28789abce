//! The page of `lenet serve` in a real browser: headless Chromium driven by chromedriver over
//! the W3C WebDriver protocol (plain HTTP + JSON, spoken here with `ureq` and `serde_json`).
//! The test draws a "7" on the canvas with WebDriver pointer actions (real mouse input as far
//! as the page can tell), waits until the page shows a predicted class, checks the bar chart
//! and feature maps, and saves a screenshot to `target/browser-test/serve.png`.
//!
//! Without `chromium` and `chromedriver` (Debian: `apt-get install chromium chromium-driver`)
//! the test prints why and skips, unless `CONVKIT_REQUIRE_BROWSER=1`, when it fails.
//! chromedriver and its browser are stopped on every path, panics included.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use convkit_cli::serve::{Predictor, Server};
use serde_json::{Value, json};

const REQUIRE_ENV: &str = "CONVKIT_REQUIRE_BROWSER";

/// The first of `names` found on `PATH` or in `extra` directories.
fn find_program(names: &[&str], extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> =
        std::env::split_paths(&path).chain(extra.iter().map(PathBuf::from)).collect();
    names.iter().flat_map(|n| dirs.iter().map(move |d| d.join(n))).find(|p| p.is_file())
}

/// Chromium and chromedriver, or `None` after saying why the test is skipped.
fn browser_or_skip() -> Option<(PathBuf, PathBuf)> {
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"], &[]);
    let driver = find_program(&["chromedriver"], &["/usr/lib/chromium"]);
    if let (Some(c), Some(d)) = (&chromium, &driver) {
        return Some((c.clone(), d.clone()));
    }
    let missing: Vec<&str> = [("chromium", chromium.is_none()), ("chromedriver", driver.is_none())]
        .iter()
        .filter(|(_, m)| *m)
        .map(|(n, _)| *n)
        .collect();
    let msg = format!(
        "{} not found; install with `apt-get install chromium chromium-driver`",
        missing.join(" and ")
    );
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1");
    assert!(!required, "{REQUIRE_ENV}=1 but {msg}");
    eprintln!("skipping the browser test: {msg} (set {REQUIRE_ENV}=1 to make this a failure)");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target")
}

/// A chromedriver child process and, once made, its browser session. Dropping it ends the
/// session (closing the browser) and kills chromedriver.
struct Driver {
    child: Child,
    base: String,
    session: Option<String>,
    agent: ureq::Agent,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = self.session.take() {
            let _ = self.agent.delete(format!("{}/session/{id}", self.base)).call();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(chromedriver: &Path, log: &Path) -> Driver {
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let driver =
            Driver { child, base: format!("http://127.0.0.1:{port}"), session: None, agent };
        let start = Instant::now();
        loop {
            let ready = driver
                .agent
                .get(format!("{}/status", driver.base))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_to_string().ok())
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                return driver;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "chromedriver did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One WebDriver command; its `value`, or a panic with the driver's message.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, body) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string().as_bytes()),
        };
        let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap();
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert_eq!(status, 200, "{method} {path}: {}", v["value"]);
        v["value"].clone()
    }

    fn session(&self) -> String {
        format!("/session/{}", self.session.as_deref().unwrap())
    }

    fn new_session(&mut self, chromium: &Path) {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1400,1000"],
            },
        }}});
        let v = self.cmd("POST", "/session", Some(caps));
        self.session = Some(v["sessionId"].as_str().unwrap().to_owned());
    }

    fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            &format!("{}/execute/sync", self.session()),
            Some(json!({"script": script, "args": []})),
        )
    }
}

/// Pointer actions drawing a "7" on the canvas whose viewport rectangle is `rect`.
fn seven_strokes(rect: &[f64]) -> Value {
    let (left, top, w, h) = (rect[0], rect[1], rect[2], rect[3]);
    let at = |fx: f64, fy: f64| (left + fx * w, top + fy * h);
    let mut actions = Vec::new();
    let mv = |(x, y): (f64, f64), ms: u64| json!({"type": "pointerMove", "origin": "viewport", "x": x.round() as i64, "y": y.round() as i64, "duration": ms});
    actions.push(mv(at(0.25, 0.2), 0));
    actions.push(json!({"type": "pointerDown", "button": 0}));
    let path = [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)];
    for seg in path.windows(2) {
        for i in 1..=12 {
            let t = f64::from(i) / 12.0;
            let p = (seg[0].0 + t * (seg[1].0 - seg[0].0), seg[0].1 + t * (seg[1].1 - seg[0].1));
            actions.push(mv(at(p.0, p.1), 15));
        }
    }
    actions.push(json!({"type": "pointerUp", "button": 0}));
    json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": actions}]})
}

#[test]
fn drawing_on_the_page_shows_a_prediction() {
    let Some((chromium, chromedriver)) = browser_or_skip() else { return };
    let out_dir = target_dir().join("browser-test");
    std::fs::create_dir_all(&out_dir).unwrap();

    let weights = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/lenet_fashion_torch.safetensors");
    let server =
        Server::bind("127.0.0.1:0", Predictor::from_checkpoint(&weights, None).unwrap()).unwrap();
    let mut driver = Driver::start(&chromedriver, &out_dir.join("chromedriver.log"));
    driver.new_session(&chromium);
    let session = driver.session();
    driver.cmd("POST", &format!("{session}/url"), Some(json!({"url": server.url()})));

    let title = driver.script("return document.title;");
    assert!(title.as_str().unwrap().contains("LeNet-5"), "{title}");
    assert_eq!(
        driver.script("return document.getElementById('prediction').dataset.class;"),
        json!("")
    );
    let rect = driver.script(
        "const r = document.getElementById('pad').getBoundingClientRect();\
         return [r.left, r.top, r.width, r.height];",
    );
    let rect: Vec<f64> = rect.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!((rect[2], rect[3]), (280.0, 280.0));
    driver.cmd("POST", &format!("{session}/actions"), Some(seven_strokes(&rect)));

    // Wait for the page to show a class.
    let start = Instant::now();
    let class = loop {
        let c = driver.script("return document.getElementById('prediction').dataset.class;");
        if let Some(c) = c.as_str().filter(|c| !c.is_empty()) {
            break c.parse::<usize>().unwrap();
        }
        let status = driver.script("return document.getElementById('status').textContent;");
        assert!(start.elapsed() < Duration::from_secs(30), "no prediction after 30 s ({status})");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(class < 10);
    // Let the last throttled request land before looking at the rest.
    std::thread::sleep(Duration::from_millis(600));
    let state = driver.script(
        "const pad = document.getElementById('pad').getContext('2d').getImageData(0, 0, 280, 280).data;\
         let ink = 0; for (let i = 0; i < pad.length; i += 4) if (pad[i] > 128) ink++;\
         const seen = document.getElementById('input').getContext('2d').getImageData(0, 0, 28, 28).data;\
         let lit = 0; for (let i = 0; i < seen.length; i += 4) if (seen[i] > 0) lit++;\
         return {ink, lit,\
           text: document.getElementById('prediction').textContent,\
           top: document.querySelectorAll('#bars .row.top').length,\
           rows: document.querySelectorAll('#bars .row').length,\
           conv1: document.querySelectorAll('#conv1 canvas').length,\
           conv2: document.querySelectorAll('#conv2 canvas').length,\
           status: document.getElementById('status').textContent};",
    );
    eprintln!("page state after drawing: {state}");
    assert!(state["ink"].as_u64().unwrap() > 1000, "the strokes did not draw: {state}");
    assert!(state["lit"].as_u64().unwrap() > 20, "the 28x28 input is empty: {state}");
    assert!(state["text"].as_str().unwrap().contains('%'), "{state}");
    assert_eq!((state["rows"].clone(), state["top"].clone()), (json!(10), json!(1)));
    assert_eq!((state["conv1"].clone(), state["conv2"].clone()), (json!(6), json!(16)));
    assert_eq!(state["status"], json!(""));

    let shot = driver.cmd("GET", &format!("{session}/screenshot"), None);
    let png = base64::engine::general_purpose::STANDARD.decode(shot.as_str().unwrap()).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert!(img.width() >= 800 && img.height() >= 600, "{}x{}", img.width(), img.height());
    let path = out_dir.join("serve.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    drop(driver);
    server.shutdown();
}
