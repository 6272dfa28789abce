//! Pictures of what the network learned and computes: conv1's filters, the feature maps of an
//! input after each convolution and pooling layer, and the training curves.
//!
//! All weights and activations are drawn with one diverging colour map, [`diverging`]:
//! blue for negative, white for zero, red for positive, scaled by the largest magnitude of
//! what is drawn together (all six filters share one scale; each layer's maps share one), so
//! colours compare within a picture. Images are plain RGB buffers ([`image::RgbImage`]);
//! saving them is the caller's business.
//!
//! This module only draws: the feature maps come from the model's one inference path,
//! [`LeNet5::inspect`](convkit_models::LeNet5::inspect), which both the `lenet visualize`
//! command and the page of `lenet serve` call.

use std::path::Path;
use std::sync::OnceLock;

use convkit_tensor::Tensor;
use image::{Rgb, RgbImage};

use convkit_models::lenet::LeNet5;
use convkit_models::{ModelError, Result, invalid, io_err};

/// The stages whose feature maps are drawn, in order: after each convolution (before its
/// ReLU, so the sign shows) and after each pooling layer.
pub use convkit_models::INSPECTED_STAGES as MAP_STAGES;

/// Pixels between cells of a grid, and around it.
pub const GAP: u32 = 4;

/// Side in pixels of one cell of conv1's filter picture (a 5x5 kernel upscaled 12 times).
pub const FILTER_CELL: u32 = 60;

/// Target side in pixels of one feature map in a grid (maps are upscaled by a whole factor
/// to about this size: 28 → 112, 14 → 112, 10 → 110, 5 → 110).
pub const MAP_CELL: u32 = 112;

/// Grid background between cells (light grey, distinct from the map's white zero).
const BACKGROUND: Rgb<u8> = Rgb([200, 200, 200]);

/// The colour of `v` on the blue–white–red map for values in `[-scale, scale]` (clamped):
/// ColorBrewer RdBu's ends, `#2166ac` for `-scale` and `#b2182b` for `+scale`, white at 0.
pub fn diverging(v: f32, scale: f32) -> Rgb<u8> {
    let t = if scale > 0.0 && v.is_finite() { (v / scale).clamp(-1.0, 1.0) } else { 0.0 };
    let end: [f32; 3] = if t < 0.0 { [33.0, 102.0, 172.0] } else { [178.0, 24.0, 43.0] };
    let a = t.abs();
    let mix = |e: f32| (255.0 + (e - 255.0) * a).round().clamp(0.0, 255.0) as u8;
    Rgb([mix(end[0]), mix(end[1]), mix(end[2])])
}

/// Largest magnitude among the finite values (0 for none).
fn max_abs(values: &[f32]) -> f32 {
    values.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Draws `maps` (`n` maps of `h`x`w` values, concatenated) in a grid of `cols` columns, each
/// value a `scale`x`scale` block, on one colour scale.
fn grid(maps: &[f32], n: usize, h: usize, w: usize, cols: usize, scale: u32) -> Result<RgbImage> {
    if n == 0 || h == 0 || w == 0 || cols == 0 || maps.len() != n * h * w {
        return Err(invalid(
            "visualize",
            format!("{} values for {n} maps of {h}x{w} in {cols} columns", maps.len()),
        ));
    }
    let rows = n.div_ceil(cols);
    let (cw, ch) = (w as u32 * scale, h as u32 * scale);
    let width = cols as u32 * cw + (cols as u32 + 1) * GAP;
    let height = rows as u32 * ch + (rows as u32 + 1) * GAP;
    let range = max_abs(maps);
    let mut img = RgbImage::from_pixel(width, height, BACKGROUND);
    for (i, map) in maps.chunks_exact(h * w).enumerate() {
        let (gx, gy) = ((i % cols) as u32, (i / cols) as u32);
        let (x0, y0) = (GAP + gx * (cw + GAP), GAP + gy * (ch + GAP));
        for (k, &v) in map.iter().enumerate() {
            let c = diverging(v, range);
            let (px, py) = ((k % w) as u32 * scale, (k / w) as u32 * scale);
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel(x0 + px + dx, y0 + py + dy, c);
                }
            }
        }
    }
    Ok(img)
}

/// conv1's filters `[6, 1, 5, 5]` side by side, each kernel [`FILTER_CELL`] pixels wide, on
/// one colour scale (the largest weight magnitude of all six). For 6 filters the picture is
/// `6 * 60 + 7 * 4` = 388 by `60 + 2 * 4` = 68 pixels.
pub fn conv1_filters(model: &LeNet5) -> Result<RgbImage> {
    let w = model.conv1.weight.value();
    let &[c_out, c_in, kh, kw] = w.dims() else {
        return Err(invalid("visualize", format!("conv1 weight {:?} is not 4-D", w.dims())));
    };
    if c_in != 1 || kh != kw || kh == 0 {
        return Err(invalid(
            "visualize",
            format!("conv1 weight {:?}: expected [c, 1, k, k]", w.dims()),
        ));
    }
    grid(w.as_slice(), c_out, kh, kw, c_out.max(1), (FILTER_CELL / kh as u32).max(1))
}

/// The feature maps of one image, `[1, c, h, w]` or `[c, h, w]`, in a grid of
/// `ceil(sqrt(c))` columns (6 maps: 3x2, 16 maps: 4x4), each map upscaled to about
/// [`MAP_CELL`] pixels, all on one colour scale.
pub fn feature_grid(maps: &Tensor) -> Result<RgbImage> {
    let (c, h, w) = match *maps.dims() {
        [1, c, h, w] | [c, h, w] => (c, h, w),
        _ => {
            return Err(invalid(
                "visualize",
                format!("feature maps {:?}: expected [1, c, h, w] or [c, h, w]", maps.dims()),
            ));
        }
    };
    let cols = (c as f64).sqrt().ceil() as usize;
    let scale = (MAP_CELL / h.max(w).max(1) as u32).max(1);
    grid(maps.as_slice(), c, h, w, cols.max(1), scale)
}

/// Side (in pixels) of one of [`feature_grid`]'s pictures for `c` maps of `side`x`side`:
/// `(width, height)`.
pub fn feature_grid_size(c: usize, side: usize) -> (u32, u32) {
    let cols = ((c as f64).sqrt().ceil() as usize).max(1);
    let rows = c.div_ceil(cols);
    let cell = side as u32 * (MAP_CELL / side.max(1) as u32).max(1);
    (cols as u32 * cell + (cols as u32 + 1) * GAP, rows as u32 * cell + (rows as u32 + 1) * GAP)
}

/// A 28x28 image as the network sees it (before padding), in gray, upscaled `scale` times.
pub fn input_picture(pixels: &[u8], scale: u32) -> Result<RgbImage> {
    if pixels.len() != 784 || scale == 0 {
        return Err(invalid("visualize", format!("{} pixels, expected 784", pixels.len())));
    }
    Ok(RgbImage::from_fn(28 * scale, 28 * scale, |x, y| {
        let p = pixels[(y / scale * 28 + x / scale) as usize];
        Rgb([p, p, p])
    }))
}

/// One line of a `model.metrics.jsonl` file (the fields the curves need).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Training accuracy of the epoch.
    pub train_acc: f64,
    /// Test accuracy after the epoch.
    pub test_acc: f64,
}

/// Reads a metrics file written by `lenet train` (one JSON object per line; blank lines
/// skipped). A resumed run may repeat an epoch; the last line for each epoch wins.
pub fn read_metrics(path: &Path) -> Result<Vec<CurvePoint>> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, &e))?;
    let bad = |line: usize, msg: String| ModelError::Invalid {
        what: "metrics",
        msg: format!("{}:{line}: {msg}", path.display()),
    };
    let mut points: Vec<CurvePoint> = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| bad(i + 1, format!("no number {k:?}")))
        };
        let p = CurvePoint {
            epoch: num("epoch")? as usize,
            train_loss: num("train_loss")?,
            train_acc: num("train_acc")?,
            test_acc: num("test_acc")?,
        };
        points.retain(|q| q.epoch != p.epoch);
        points.push(p);
    }
    points.sort_by_key(|p| p.epoch);
    Ok(points)
}

/// Environment variable naming a TrueType font for the curves' text, tried before the usual
/// system fonts.
pub const FONT_ENV: &str = "CONVKIT_FONT";

/// Fonts tried in order when [`FONT_ENV`] is not set (Debian's `fonts-dejavu-core`,
/// `fonts-liberation`, `fonts-freefont-ttf`).
pub const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// Registers a font for plotters' `sans-serif` once per process; the path used, or the
/// reason there is none.
fn register_font() -> std::result::Result<&'static str, String> {
    static FONT: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    let r = FONT.get_or_init(|| {
        let env = std::env::var(FONT_ENV).ok();
        let tried: Vec<String> =
            env.into_iter().chain(FONT_CANDIDATES.iter().map(|s| (*s).to_owned())).collect();
        for path in &tried {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps fonts for the life of the process; this happens once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(
                    "sans-serif",
                    plotters::style::FontStyle::Normal,
                    bytes,
                )
                .is_ok()
                {
                    return Ok(path.clone());
                }
            }
        }
        Err(format!(
            "no TrueType font found (tried {}; set {FONT_ENV} or install fonts-dejavu-core)",
            tried.join(", ")
        ))
    });
    r.as_deref().map_err(Clone::clone)
}

/// Axis labels at whole epochs only.
fn epoch_label(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 && *x >= 1.0 { format!("{x:.0}") } else { String::new() }
}

/// Width and height of [`training_curves`]'s picture.
pub const CURVES_SIZE: (u32, u32) = (960, 400);

/// Training curves: loss per epoch (left) and training and test accuracy per epoch (right).
/// Needs a TrueType font for the axes (see [`FONT_CANDIDATES`]); without one, or without
/// points, it is an error that says so.
pub fn training_curves(points: &[CurvePoint]) -> Result<RgbImage> {
    use plotters::prelude::*;

    if points.is_empty() {
        return Err(invalid("training curves", "the metrics file has no epochs"));
    }
    register_font().map_err(|msg| invalid("training curves", msg))?;
    let (w, h) = CURVES_SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    let plot_err = |e: &dyn std::fmt::Display| invalid("training curves", e.to_string());
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let (left, right) = root.split_horizontally(w / 2);
        let last = points.iter().map(|p| p.epoch).max().unwrap_or(1).max(1) as f64;
        let x_range = 0.5..last + 0.5;
        let blue = RGBColor(33, 102, 172);
        let red = RGBColor(178, 24, 43);

        let max_loss = points.iter().map(|p| p.train_loss).fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&left)
            .caption("Training loss", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(x_range.clone(), 0.0..(max_loss * 1.1).max(1e-3))
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy")
            .x_label_formatter(&epoch_label)
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| plot_err(&e))?;
        let loss: Vec<(f64, f64)> = points.iter().map(|p| (p.epoch as f64, p.train_loss)).collect();
        chart
            .draw_series(LineSeries::new(loss.clone(), blue.stroke_width(2)))
            .map_err(|e| plot_err(&e))?;
        chart
            .draw_series(loss.iter().map(|&xy| Circle::new(xy, 3, blue.filled())))
            .map_err(|e| plot_err(&e))?;

        let lo = points.iter().flat_map(|p| [p.train_acc, p.test_acc]).fold(1.0f64, f64::min);
        let y_lo = ((lo - 0.05).max(0.0) * 20.0).floor() / 20.0;
        let mut chart = ChartBuilder::on(&right)
            .caption("Accuracy", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(52)
            .build_cartesian_2d(x_range, y_lo..1.0)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("accuracy")
            .x_label_formatter(&epoch_label)
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| plot_err(&e))?;
        for (name, color, get) in [
            ("train", blue, (|p: &CurvePoint| p.train_acc) as fn(&CurvePoint) -> f64),
            ("test", red, |p: &CurvePoint| p.test_acc),
        ] {
            let series: Vec<(f64, f64)> = points.iter().map(|p| (p.epoch as f64, get(p))).collect();
            chart
                .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(&e))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(series.iter().map(|&xy| Circle::new(xy, 3, color.filled())))
                .map_err(|e| plot_err(&e))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        root.present().map_err(|e| plot_err(&e))?;
    }
    RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| invalid("training curves", "internal: buffer size mismatch"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use convkit_tensor::Rng;

    #[test]
    fn colour_map_is_blue_white_red_and_clamped() {
        assert_eq!(diverging(0.0, 1.0), Rgb([255, 255, 255]));
        assert_eq!(diverging(-1.0, 1.0), Rgb([33, 102, 172]));
        assert_eq!(diverging(2.0, 1.0), Rgb([178, 24, 43]));
        assert_eq!(diverging(f32::NAN, 1.0), Rgb([255, 255, 255]));
        assert_eq!(diverging(3.0, 0.0), Rgb([255, 255, 255]));
        let half = diverging(0.5, 1.0);
        assert!(half[0] > half[2] && half[1] < 255);
    }

    #[test]
    fn pictures_have_the_documented_sizes() {
        let model = LeNet5::new(&mut Rng::new(0)).unwrap();
        assert_eq!(conv1_filters(&model).unwrap().dimensions(), (388, 68));
        let img: Vec<u8> = (0..784).map(|i| (i % 200) as u8).collect();
        let x = convkit_models::data::preprocess(&[&img], Default::default()).unwrap();
        let ins = model.inspect(&x).unwrap();
        assert!((ins.probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(ins.class() < 10);
        for (stage, c, side) in
            [("conv1", 6, 28), ("pool1", 6, 14), ("conv2", 16, 10), ("pool2", 16, 5)]
        {
            let t = ins.stage(stage).unwrap();
            assert_eq!(t.dims(), [1, c, side, side]);
            assert_eq!(feature_grid(t).unwrap().dimensions(), feature_grid_size(c, side));
        }
        assert_eq!(feature_grid_size(6, 28), (3 * 112 + 4 * 4, 2 * 112 + 3 * 4));
        assert!(feature_grid(&Tensor::zeros(&[2, 3])).is_err());
        assert!(input_picture(&img[..10], 4).is_err());
        assert_eq!(input_picture(&img, 4).unwrap().dimensions(), (112, 112));
    }

    #[test]
    fn metrics_are_read_last_line_per_epoch_wins() {
        let dir = std::env::temp_dir().join(format!("convkit-vis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.metrics.jsonl");
        std::fs::write(
            &f,
            "{\"epoch\":1,\"train_loss\":0.9,\"train_acc\":0.6,\"test_acc\":0.7}\n\n\
             {\"epoch\":2,\"train_loss\":0.5,\"train_acc\":0.8,\"test_acc\":0.82}\n\
             {\"epoch\":2,\"train_loss\":0.4,\"train_acc\":0.85,\"test_acc\":0.84}\n",
        )
        .unwrap();
        let p = read_metrics(&f).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].train_loss, 0.4);
        std::fs::write(&f, "{\"epoch\":1}\n").unwrap();
        let err = read_metrics(&f).unwrap_err().to_string();
        assert!(err.contains(":1: no number \"train_loss\""), "{err}");
        assert!(read_metrics(&dir.join("absent.jsonl")).is_err());
        assert!(training_curves(&[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
