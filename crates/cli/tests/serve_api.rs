//! The HTTP API of `lenet serve`, over a real socket: a server on a free loopback port with
//! the PyTorch-trained fixture weights, asked with `ureq` for the page, predictions from JSON
//! pixels and from PNG pictures, and a series of bad requests, each of which must get a 4xx
//! with a JSON error while the server goes on answering.
#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use convkit_cli::serve::{MAX_BODY, Predictor, Server};
use convkit_models::data::Normalization;
use convkit_tensor::load_safetensors;
use image::{GrayImage, ImageFormat, Luma, Rgb, RgbImage};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures").join(name)
}

fn start() -> Server {
    let p = Predictor::from_checkpoint(&fixture("lenet_fashion_torch.safetensors"), None).unwrap();
    Server::bind("127.0.0.1:0", p).unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Status, `Allow` header and body of a response.
struct Answer {
    status: u16,
    content_type: String,
    allow: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }

    /// Expects a JSON error with `status` whose message contains `part`.
    fn expect_error(&self, status: u16, part: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert!(self.content_type.starts_with("application/json"), "{}", self.content_type);
        let msg = self.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(part), "error {msg:?} lacks {part:?}");
    }
}

fn read(mut r: ureq::http::Response<ureq::Body>) -> Answer {
    let header = |k: &str| r.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (content_type, allow) = (header("content-type").unwrap_or_default(), header("allow"));
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().unwrap();
    Answer { status, content_type, allow, body }
}

fn get(s: &Server, path: &str) -> Answer {
    read(agent().get(format!("http://{}{path}", s.addr())).call().unwrap())
}

fn post(s: &Server, path: &str, content_type: Option<&str>, body: &[u8]) -> Answer {
    let mut req = agent().post(format!("http://{}{path}", s.addr()));
    if let Some(ct) = content_type {
        req = req.header("Content-Type", ct);
    }
    read(req.send(body).unwrap())
}

fn png_bytes(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png).unwrap();
    out
}

/// The first `n` images of the stored PyTorch inputs, back as 28x28 bytes, with PyTorch's
/// logits for them.
fn fixture_images(n: usize) -> Vec<(Vec<u8>, Vec<f32>)> {
    let io = load_safetensors(fixture("lenet_fashion_torch_io100.safetensors")).unwrap();
    let norm = Normalization::default();
    let (x, logits) = (io["inputs"].as_slice(), io["logits"].as_slice());
    (0..n)
        .map(|i| {
            let img = &x[i * 1024..(i + 1) * 1024];
            let px: Vec<u8> = (0..784)
                .map(|k| {
                    let v = img[(k / 28 + 2) * 32 + k % 28 + 2];
                    ((v * norm.std + norm.mean) * 255.0).round().clamp(0.0, 255.0) as u8
                })
                .collect();
            (px, logits[i * 10..(i + 1) * 10].to_vec())
        })
        .collect()
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Checks the documented layout of a prediction and returns its class.
fn check_prediction(v: &Value) -> usize {
    let probs: Vec<f64> =
        v["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    assert_eq!(probs.len(), 10);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    let class = v["class"].as_u64().unwrap() as usize;
    let best = (0..10).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
    assert_eq!(class, best);
    assert_eq!(v["label"], json!(class.to_string()), "no metadata: digits");
    assert_eq!(v["input"].as_array().unwrap().len(), 784);
    for (layer, n, len) in [("conv1", 6, 784), ("conv2", 16, 100)] {
        let maps = v["feature_maps"][layer].as_array().unwrap();
        assert_eq!(maps.len(), n, "{layer}");
        assert!(maps.iter().all(|m| m.as_array().unwrap().len() == len), "{layer}");
    }
    class
}

#[test]
fn page_health_and_routes() {
    let s = start();
    assert!(s.addr().ip().is_loopback() && s.addr().port() != 0);
    let page = get(&s, "/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{}", page.content_type);
    for part in ["<canvas id=\"pad\"", "id=\"prediction\"", "/api/predict", "pointermove"] {
        assert!(page.body.contains(part), "page lacks {part}");
    }
    assert!(!page.body.contains("http://") && !page.body.contains("https://"), "external resource");
    let health = get(&s, "/api/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["labels"].as_array().unwrap().len(), 10);

    get(&s, "/nope").expect_error(404, "no such page: /nope");
    let a = get(&s, "/api/predict");
    a.expect_error(405, "use POST");
    assert_eq!(a.allow.as_deref(), Some("POST"));
    let a = post(&s, "/", Some("text/plain"), b"x");
    a.expect_error(405, "use GET");
    assert_eq!(a.allow.as_deref(), Some("GET, HEAD"));
    s.shutdown();
}

#[test]
fn json_pixels_give_pytorch_probabilities() {
    let s = start();
    for (px, logits) in fixture_images(4) {
        let expected = softmax(&logits);
        let want = (0..10).max_by(|&a, &b| expected[a].total_cmp(&expected[b])).unwrap();
        let flat = post(
            &s,
            "/api/predict",
            Some("application/json"),
            json!({ "pixels": px }).to_string().as_bytes(),
        );
        assert_eq!(flat.status, 200, "{}", flat.body);
        let v = flat.json();
        assert_eq!(check_prediction(&v), want);
        for (p, e) in v["probabilities"].as_array().unwrap().iter().zip(&expected) {
            assert!((p.as_f64().unwrap() - f64::from(*e)).abs() < 1e-4, "{p} vs {e}");
        }
        assert_eq!(v["input"], json!(px));
        // 28 rows of 28 in 0..1, without a Content-Type: the same answer.
        let rows: Vec<Vec<f64>> =
            px.chunks(28).map(|r| r.iter().map(|&p| f64::from(p) / 255.0).collect()).collect();
        let nested = post(&s, "/api/predict", None, json!(rows).to_string().as_bytes());
        assert_eq!(nested.status, 200, "{}", nested.body);
        assert_eq!(nested.json()["class"], v["class"]);
        // And as a 28x28 PNG, used as is.
        let png = png_bytes(&GrayImage::from_raw(28, 28, px.clone()).unwrap().into());
        let pic = post(&s, "/api/predict", Some("image/png"), &png);
        assert_eq!(pic.status, 200, "{}", pic.body);
        assert_eq!(pic.json()["input"], json!(px));
        assert_eq!(pic.json()["class"], v["class"]);
    }
}

/// A "7" in dark ink on a light, colour background, 200x160, off-centre.
fn drawn_seven() -> image::DynamicImage {
    let mut img = RgbImage::from_pixel(200, 160, Rgb([250, 245, 235]));
    let mut dab = |cx: i32, cy: i32| {
        for dy in -6..=6 {
            for dx in -6..=6 {
                let (x, y) = (cx + dx, cy + dy);
                if dx * dx + dy * dy <= 36 && (0..200).contains(&x) && (0..160).contains(&y) {
                    img.put_pixel(x as u32, y as u32, Rgb([20, 20, 60]));
                }
            }
        }
    };
    for t in 0..=100 {
        let t = t as f32 / 100.0;
        dab((20.0 + 80.0 * t) as i32, 20); // top bar
        dab((100.0 - 50.0 * t) as i32, (20.0 + 120.0 * t) as i32); // diagonal
    }
    img.into()
}

#[test]
fn a_drawn_picture_is_centred_like_mnist() {
    let s = start();
    let a = post(&s, "/api/predict", Some("image/png"), &png_bytes(&drawn_seven()));
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    check_prediction(&v);
    let input: Vec<u8> =
        v["input"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as u8).collect();
    // Inverted (light ink on black), 20 pixels tall, centred by mass.
    let rows: Vec<usize> =
        (0..28).filter(|r| input[r * 28..(r + 1) * 28].iter().any(|&p| p > 0)).collect();
    assert_eq!(rows.len(), 20, "ink rows {rows:?}");
    assert_eq!(input[0], 0);
    let (mut m, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (k, &p) in input.iter().enumerate() {
        m += f64::from(p);
        sx += f64::from(p) * ((k % 28) as f64 + 0.5);
        sy += f64::from(p) * ((k / 28) as f64 + 0.5);
    }
    assert!((sx / m - 14.0).abs() <= 0.5 && (sy / m - 14.0).abs() <= 0.5);
    // A Gray-alpha picture and a JPEG decode too.
    let ga = image::DynamicImage::ImageLumaA8(drawn_seven().to_luma_alpha8());
    assert_eq!(post(&s, "/api/predict", Some("image/png"), &png_bytes(&ga)).status, 200);
    let mut jpeg = Vec::new();
    drawn_seven().write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).unwrap();
    assert_eq!(post(&s, "/api/predict", Some("image/jpeg"), &jpeg).status, 200);
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_carries_on() {
    let s = start();
    let good = json!({ "pixels": fixture_images(1)[0].0 }).to_string();
    let predict = |ct: Option<&str>, body: &[u8]| post(&s, "/api/predict", ct, body);

    predict(Some("application/json"), b"{\"pixels\": [0, 1, 2]}")
        .expect_error(400, "3 pixels, expected 784");
    let rows = json!(vec![vec![0; 28]; 27]).to_string();
    predict(Some("application/json"), rows.as_bytes()).expect_error(400, "27 rows");
    predict(Some("image/png"), b"GIF89a this is no PNG").expect_error(400, "not a PNG or JPEG");
    predict(None, b"\x00\x01\x02 binary junk").expect_error(400, "not a PNG or JPEG");
    let truncated = &png_bytes(&drawn_seven())[..60];
    predict(Some("image/png"), truncated).expect_error(400, "cannot decode");
    predict(Some("application/json"), b"{\"pixels\": [1, 2,").expect_error(400, "malformed JSON");
    predict(Some("application/json"), b"{\"image\": 1}").expect_error(400, "without \"pixels\"");
    predict(Some("application/json"), b"").expect_error(400, "empty body");
    let huge = vec![b'7'; MAX_BODY + 1024];
    predict(Some("image/png"), &huge).expect_error(413, "1 MiB");
    predict(Some("application/json"), &huge).expect_error(413, "1 MiB");

    // An absurd announced length is refused at once, and does not bring the server down.
    let mut raw = std::net::TcpStream::connect(s.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    raw.write_all(
        b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\
          Content-Length: 100000000000000\r\n\r\n\x89PNG",
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 512];
    while !answer.ends_with(b"}") {
        let n = raw.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("the limit is 1 MiB"), "{answer}");
    drop(raw);

    // Still serving, on every worker.
    for _ in 0..8 {
        let a = predict(Some("application/json"), good.as_bytes());
        assert_eq!(a.status, 200, "{}", a.body);
        check_prediction(&a.json());
    }
    // Several clients at once.
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| predict(Some("application/json"), good.as_bytes()).status))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 200);
        }
    });
    drop(s);
}

#[test]
fn a_blank_canvas_is_an_empty_image_not_an_error() {
    let s = start();
    let blank = png_bytes(&GrayImage::from_pixel(280, 280, Luma([0])).into());
    let a = post(&s, "/api/predict", Some("image/png"), &blank);
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    check_prediction(&v);
    assert!(v["input"].as_array().unwrap().iter().all(|p| p == 0));
}

#[test]
fn the_page_and_lenet_predict_share_one_inference_path() {
    let path = fixture("lenet_fashion_torch.safetensors");
    let predictor = Predictor::from_checkpoint(&path, None).unwrap();
    let (model, norm, _) = convkit_models::LeNet5::load(&path).unwrap();
    for (px, _) in fixture_images(3) {
        let served = predictor.predict(&px).unwrap();
        let x = convkit_models::data::preprocess(&[&px], norm).unwrap();
        // What `lenet predict` prints: the softmax of `LeNet5::logits`, bit for bit.
        let predicted = model.logits(&x).unwrap().softmax(1).unwrap().into_vec();
        assert_eq!(served.probabilities, predicted);
        assert_eq!(served.conv1.len(), 6);
        assert_eq!(served.conv2.len(), 16);
    }
}
