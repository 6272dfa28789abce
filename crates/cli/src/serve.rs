//! A small HTTP server to draw on a canvas and watch LeNet-5 classify the drawing live.
//!
//! `lenet serve --weights W` runs a [`Server`]: a few worker threads over one
//! [`tiny_http`] listener (no async runtime), loopback (`127.0.0.1:8080`) by default.
//!
//! ## Routes
//! | request | answer |
//! |---|---|
//! | `GET /` | the page: a 280x280 canvas to draw on (mouse, pen or touch), a bar chart of the ten class probabilities that follows the drawing, the 28x28 image the network sees, and the conv1 and conv2 feature maps. One self-contained HTML file, no external resources. |
//! | `GET /api/health` | `{"status":"ok","labels":[10 class names]}` |
//! | `POST /api/predict` | a prediction, see below |
//! | other methods on these paths | `405` with an `Allow` header |
//! | any other path | `404` |
//!
//! ## `POST /api/predict`: accepted bodies
//! At most [`MAX_BODY`] bytes (1 MiB); a larger body is refused with `413`.
//! - **A picture**, PNG or JPEG (`Content-Type: image/png` or `image/jpeg`), any size up to
//!   4096 on a side, gray, RGB or RGBA (converted to gray; transparency ignored). A 28x28
//!   picture is used as is, in MNIST's convention (light object on a dark background). Any
//!   other size is preprocessed as MNIST was made ([`convkit_models::preprocess`]): inverted if its
//!   border is mostly light, cropped to the ink, scaled to 20 pixels on the larger side, and
//!   centred by centre of mass in 28x28.
//! - **JSON pixels** (`Content-Type: application/json`): `{"pixels": P}` or `P` alone, where
//!   `P` is either a flat array of 784 numbers (row-major 28x28) or 28 arrays of 28 numbers.
//!   Values are 0..255, or 0..1 when none is above 1; light on dark, used as is.
//! - Without a `Content-Type` (or with another one), a body starting with `{` or `[` is read
//!   as JSON and anything else as a picture.
//!
//! ## Answer
//! ```json
//! {"probabilities": [0.01, …10 values],
//!  "class": 3, "label": "Dress",
//!  "input": [784 values 0..255, the 28x28 image the network saw],
//!  "feature_maps": {"conv1": [[784 values], …6 maps of 28x28],
//!                   "conv2": [[100 values], …16 maps of 10x10]}}
//! ```
//! Probabilities are rounded to 6 decimals; feature maps are the convolutions' outputs before
//! their ReLU, row-major, rounded to 3 decimals. Every error is `{"error": "what is wrong"}`
//! with a 4xx status (5xx only for a fault of the server), and the server goes on serving.
//!
//! ## Class names
//! From the checkpoint's `dataset` metadata, written by `lenet train` (`mnist` or
//! `fashion-mnist`), unless the caller picks a dataset; digits otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use serde_json::{Value, json};
use tiny_http::{Header, Method, Request, Response};

use convkit_models::data::{IMAGE_SIZE, Normalization};
use convkit_models::fetch::DatasetKind;
use convkit_models::lenet::{CLASSES, LeNet5};
use convkit_models::preprocess::{decode_picture, picture_to_mnist};
use convkit_models::{Result, invalid};

/// Largest request body accepted: 1 MiB.
pub const MAX_BODY: usize = 1 << 20;

/// The address `lenet serve` listens on by default (loopback only).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// Announced bodies larger than this are refused without reading or draining them. When a
/// request is dropped with its body unread, tiny_http 0.12 reads and discards the rest into
/// one buffer of the announced remaining size, so an absurd `Content-Length` (say 10^14)
/// would be an allocation failure that aborts the process. Bodies over [`MAX_BODY`] up to
/// this size are drained normally; larger ones get their 413 and the connection is
/// abandoned instead.
const DRAIN_LIMIT: usize = 64 << 20;

/// Worker threads of [`Server::bind`].
pub const WORKERS: usize = 4;

/// The page served at `/`.
const PAGE: &str = include_str!("serve/index.html");

/// Class names when nothing says which dataset the model learned.
const DIGITS: [&str; CLASSES] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// A model ready to answer requests: weights, normalization and class names.
#[derive(Debug, Clone)]
pub struct Predictor {
    model: LeNet5,
    norm: Normalization,
    labels: [&'static str; CLASSES],
}

/// One answer of [`Predictor::predict`].
#[derive(Debug, Clone)]
pub struct Prediction {
    /// The 28x28 image classified (784 bytes).
    pub input: Vec<u8>,
    /// Probability of each class.
    pub probabilities: Vec<f32>,
    /// The most probable class.
    pub class: usize,
    /// Its name.
    pub label: &'static str,
    /// conv1's output before ReLU: 6 maps of 28x28, row-major.
    pub conv1: Vec<Vec<f32>>,
    /// conv2's output before ReLU: 16 maps of 10x10, row-major.
    pub conv2: Vec<Vec<f32>>,
}

impl Prediction {
    /// The JSON answer documented in the [module docs](self).
    pub fn to_json(&self) -> Value {
        // Rounded in f64, so that the JSON says 0.123 rather than the f32's 0.12300000339….
        let round = |v: f32, scale: f64| (f64::from(v) * scale).round() / scale;
        let maps = |maps: &[Vec<f32>]| -> Vec<Vec<f64>> {
            maps.iter().map(|m| m.iter().map(|&v| round(v, 1e3)).collect()).collect()
        };
        let probabilities: Vec<f64> = self.probabilities.iter().map(|&p| round(p, 1e6)).collect();
        json!({
            "probabilities": probabilities,
            "class": self.class,
            "label": self.label,
            "input": self.input,
            "feature_maps": {"conv1": maps(&self.conv1), "conv2": maps(&self.conv2)},
        })
    }
}

impl Predictor {
    /// A predictor over `model` with its input normalization and class names.
    pub fn new(model: LeNet5, norm: Normalization, labels: [&'static str; CLASSES]) -> Self {
        Self { model, norm, labels }
    }

    /// Loads a checkpoint; class names from `dataset` when given, else from the checkpoint's
    /// `dataset` metadata, else digits.
    pub fn from_checkpoint(path: &Path, dataset: Option<DatasetKind>) -> Result<Self> {
        let (model, norm, meta) = LeNet5::load(path)?;
        let kind = match dataset {
            Some(k) => Some(k),
            None => meta.get("dataset").and_then(|d| d.parse::<DatasetKind>().ok()),
        };
        let labels = kind.map_or(DIGITS, DatasetKind::class_names);
        Ok(Self::new(model, norm, labels))
    }

    /// The class names.
    pub fn labels(&self) -> [&'static str; CLASSES] {
        self.labels
    }

    /// Classifies one 28x28 image (784 bytes, light on dark) and keeps conv1's and conv2's
    /// feature maps.
    pub fn predict(&self, pixels: &[u8]) -> Result<Prediction> {
        let ins = self.model.inspect(&convkit_models::data::preprocess(&[pixels], self.norm)?)?;
        let maps = |stage: &str| -> Result<Vec<Vec<f32>>> {
            let t =
                ins.stage(stage).ok_or_else(|| invalid("predict", format!("no {stage} output")))?;
            let &[_, c, h, w] = t.dims() else {
                return Err(invalid("predict", format!("{stage} output {:?}", t.dims())));
            };
            Ok(t.as_slice().chunks_exact(h * w).take(c).map(<[f32]>::to_vec).collect())
        };
        let class = ins.class();
        Ok(Prediction {
            input: pixels.to_vec(),
            probabilities: ins.probabilities.clone(),
            class,
            label: self.labels[class],
            conv1: maps("conv1")?,
            conv2: maps("conv2")?,
        })
    }
}

/// A running server: worker threads answering on [`Server::addr`]. Dropping it (or
/// [`Server::shutdown`]) stops the workers and closes the socket.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Server {
    /// Listens on `addr` (port 0 picks a free port) and answers with [`WORKERS`] threads.
    pub fn bind(addr: impl ToSocketAddrs, predictor: Predictor) -> Result<Self> {
        Self::bind_with_workers(addr, predictor, WORKERS)
    }

    /// [`Server::bind`] with `workers` threads (at least 1).
    pub fn bind_with_workers(
        addr: impl ToSocketAddrs,
        predictor: Predictor,
        workers: usize,
    ) -> Result<Self> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| invalid("serve", format!("bad address: {e}")))?
            .collect();
        let http = tiny_http::Server::http(addrs.as_slice()).map_err(|e| {
            let shown: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            invalid("serve", format!("cannot listen on {}: {e}", shown.join(", ")))
        })?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| invalid("serve", "the listener has no IP address"))?;
        let http = Arc::new(http);
        let predictor = Arc::new(predictor);
        let stopping = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for i in 0..workers.max(1) {
            let (http, predictor, stopping) =
                (Arc::clone(&http), Arc::clone(&predictor), Arc::clone(&stopping));
            let handle = std::thread::Builder::new()
                .name(format!("lenet-serve-{i}"))
                .spawn(move || worker(&http, &predictor, &stopping))
                .map_err(|e| invalid("serve", format!("cannot start a worker thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Self { http, addr, stopping, workers: handles })
    }

    /// The address listened on (with the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/`, the page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Blocks until the workers stop (in practice, until the process is interrupted).
    pub fn wait(mut self) {
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }

    /// Stops the workers after the requests in progress and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.http.unblock();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One worker: answers requests until the server stops. A panic while answering (a bug, not
/// bad input) costs that request a 500, not the worker.
fn worker(http: &tiny_http::Server, predictor: &Predictor, stopping: &AtomicBool) {
    loop {
        match http.recv() {
            Ok(request) => {
                let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answer(predictor, request);
                }));
                if caught.is_err() {
                    eprintln!("lenet serve: internal error while answering a request");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            Err(e) => {
                // E.g. out of file descriptors: say so, and do not spin.
                eprintln!("lenet serve: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// An answer before it is sent.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    allow: Option<&'static str>,
}

impl Reply {
    fn json(status: u16, v: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            allow: None,
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Self {
        Self::json(status, &json!({ "error": msg.into() }))
    }
}

fn answer(predictor: &Predictor, mut request: Request) {
    let reply = route(predictor, &mut request);
    let mut headers = vec![
        ("Content-Type", reply.content_type.to_owned()),
        ("Cache-Control", "no-store".to_owned()),
    ];
    if let Some(allow) = reply.allow {
        headers.push(("Allow", allow.to_owned()));
    }
    if request.body_length().is_some_and(|n| n > DRAIN_LIMIT) {
        // Answer, then keep tiny_http from draining the unread body (see DRAIN_LIMIT): the
        // connection is taken over as a raw stream (tiny_http's only way to detach it from
        // the request), the answer written on it, and the stream abandoned, costing one idle
        // socket and connection thread.
        headers.push(("Content-Length", reply.body.len().to_string()));
        let head = with_headers(Response::empty(reply.status), &headers);
        let mut stream = request.upgrade("close", head);
        let _ = stream.write_all(&reply.body).and_then(|()| stream.flush());
        std::mem::forget(stream);
        return;
    }
    let response = with_headers(Response::from_data(reply.body), &headers);
    // The client may have gone away; nothing to do about it.
    let _ = request.respond(response.with_status_code(reply.status));
}

fn with_headers<R: Read>(mut response: Response<R>, headers: &[(&str, String)]) -> Response<R> {
    for (k, v) in headers {
        if let Ok(h) = Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            response.add_header(h);
        }
    }
    response
}

fn route(predictor: &Predictor, request: &mut Request) -> Reply {
    let path = request.url().split(['?', '#']).next().unwrap_or("").to_owned();
    let method = request.method().clone();
    match (path.as_str(), &method) {
        ("/" | "/index.html", Method::Get | Method::Head) => Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: PAGE.as_bytes().to_vec(),
            allow: None,
        },
        ("/api/health", Method::Get | Method::Head) => {
            Reply::json(200, &json!({"status": "ok", "labels": predictor.labels()}))
        }
        ("/api/predict", Method::Post) => match predict(predictor, request) {
            Ok(v) => Reply::json(200, &v),
            Err(e) => e,
        },
        ("/" | "/index.html" | "/api/health", _) => Reply {
            allow: Some("GET, HEAD"),
            ..Reply::error(405, format!("{method} {path} is not allowed; use GET"))
        },
        ("/api/predict", _) => Reply {
            allow: Some("POST"),
            ..Reply::error(405, format!("{method} {path} is not allowed; use POST"))
        },
        _ => Reply::error(
            404,
            format!("no such page: {path} (try GET /, GET /api/health, POST /api/predict)"),
        ),
    }
}

fn predict(predictor: &Predictor, request: &mut Request) -> std::result::Result<Value, Reply> {
    let content_type = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Content-Type"))
        .map(|h| h.value.as_str().to_ascii_lowercase())
        .unwrap_or_default();
    let body = read_body(request)?;
    if body.is_empty() {
        return Err(Reply::error(
            400,
            "empty body: send a PNG or JPEG picture, or JSON {\"pixels\": [784 numbers]}",
        ));
    }
    let is_json = if content_type.starts_with("image/") {
        false
    } else if content_type.starts_with("application/json") || content_type.contains("+json") {
        true
    } else {
        matches!(body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
    };
    let pixels = if is_json {
        pixels_from_json(&body).map_err(|msg| Reply::error(400, msg))?
    } else {
        let img = decode_picture(&body).map_err(|e| Reply::error(400, e.to_string()))?;
        picture_to_mnist(&img).map_err(|e| Reply::error(400, e.to_string()))?
    };
    let p = predictor.predict(&pixels).map_err(|e| Reply::error(500, e.to_string()))?;
    Ok(p.to_json())
}

/// The body, refusing more than [`MAX_BODY`] bytes whether announced by `Content-Length` or
/// not.
fn read_body(request: &mut Request) -> std::result::Result<Vec<u8>, Reply> {
    let too_large = |n: String| {
        Reply::error(
            413,
            format!("body too large: {n} bytes; the limit is 1 MiB ({MAX_BODY} bytes)"),
        )
    };
    if let Some(n) = request.body_length().filter(|&n| n > MAX_BODY) {
        return Err(too_large(n.to_string()));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| Reply::error(400, format!("cannot read the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(too_large("more than 1048576".to_owned()));
    }
    Ok(body)
}

/// Reads the JSON pixel formats of the [module docs](self) into 784 bytes; the message says
/// what is wrong.
pub fn pixels_from_json(body: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let p = match &v {
        Value::Object(m) => m.get("pixels").ok_or_else(|| {
            let keys: Vec<&String> = m.keys().collect();
            format!("JSON object without \"pixels\" (keys: {keys:?}); send {{\"pixels\": [784 numbers]}}")
        })?,
        Value::Array(_) => &v,
        _ => return Err("JSON must be {\"pixels\": [...]} or an array of pixels".to_owned()),
    };
    let Value::Array(items) = p else {
        return Err("\"pixels\" must be an array of 784 numbers or 28 arrays of 28".to_owned());
    };
    let side = IMAGE_SIZE;
    let mut values: Vec<f64> = Vec::with_capacity(side * side);
    let number = |x: &Value, at: String| -> std::result::Result<f64, String> {
        match x.as_f64() {
            Some(f) if (0.0..=255.0).contains(&f) => Ok(f),
            Some(f) => Err(format!("pixel {at} is {f}, outside 0..255")),
            None => Err(format!("pixel {at} is {x}, not a number")),
        }
    };
    if items.first().is_some_and(Value::is_array) {
        if items.len() != side {
            return Err(format!("{} rows, expected 28 rows of 28 numbers", items.len()));
        }
        for (r, row) in items.iter().enumerate() {
            let row = row.as_array().ok_or_else(|| format!("row {r} is not an array"))?;
            if row.len() != side {
                return Err(format!("row {r} has {} numbers, expected 28", row.len()));
            }
            for (c, x) in row.iter().enumerate() {
                values.push(number(x, format!("[{r}][{c}]"))?);
            }
        }
    } else {
        if items.len() != side * side {
            return Err(format!(
                "{} pixels, expected 784 (28x28, row-major) or 28 rows of 28",
                items.len()
            ));
        }
        for (i, x) in items.iter().enumerate() {
            values.push(number(x, format!("{i}"))?);
        }
    }
    let unit = values.iter().all(|&f| f <= 1.0);
    let scale = if unit { 255.0 } else { 1.0 };
    Ok(values.iter().map(|&f| (f * scale).round().clamp(0.0, 255.0) as u8).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn json_pixels_in_every_documented_form() {
        let flat: Vec<u32> = (0..784).map(|i| i % 256).collect();
        let a = pixels_from_json(json!({ "pixels": flat }).to_string().as_bytes()).unwrap();
        assert_eq!(a[300], 44);
        let b = pixels_from_json(json!(flat).to_string().as_bytes()).unwrap();
        assert_eq!(a, b);
        let rows: Vec<Vec<u32>> = flat.chunks(28).map(<[u32]>::to_vec).collect();
        let c = pixels_from_json(json!({ "pixels": rows }).to_string().as_bytes()).unwrap();
        assert_eq!(a, c);
        let unit: Vec<f64> = (0..784).map(|i| if i == 5 { 1.0 } else { 0.5 }).collect();
        let d = pixels_from_json(json!(unit).to_string().as_bytes()).unwrap();
        assert_eq!((d[5], d[0]), (255, 128));
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        let e = |s: &str| pixels_from_json(s.as_bytes()).unwrap_err();
        assert!(e("{\"pixels\": [1, 2").starts_with("malformed JSON"));
        assert!(e("{\"pixels\": [1, 2, 3]}").contains("3 pixels, expected 784"));
        assert!(e("{\"image\": []}").contains("without \"pixels\""));
        assert!(e("42").contains("must be"));
        let mut v = vec![json!(0); 784];
        v[10] = json!(300);
        assert!(e(&json!(v).to_string()).contains("pixel 10 is 300"));
        v[10] = json!("x");
        assert!(e(&json!(v).to_string()).contains("not a number"));
        let rows = vec![vec![0; 27]; 28];
        assert!(e(&json!(rows).to_string()).contains("row 0 has 27"));
    }
}
