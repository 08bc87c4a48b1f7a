//! Pictures: sample grids, labelled trajectory strips, animated GIFs and loss curves (PNG/GIF).
//!
//! Pixel values in [-1, 1] are mapped to [0, 1] and clamped, as in the reference.

use std::io::Cursor;
use std::path::Path;
use std::sync::Once;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, ImageFormat, Rgb, RgbImage, RgbaImage};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::tensor_file::write_atomic;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

fn register_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("the embedded DejaVuSans.ttf is a valid font"));
    });
}

/// A stack of images, `[count, channels, height, width]` (1 grey or 3 colour channels),
/// values in data scale [-1, 1].
#[derive(Debug, Clone, Copy)]
pub struct Images<'a> {
    /// Row-major values of all images.
    pub pixels: &'a [f32],
    /// `[channels, height, width]` of each image.
    pub shape: [usize; 3],
}

impl Images<'_> {
    /// Number of images.
    pub fn count(&self) -> usize {
        self.pixels.len() / self.shape.iter().product::<usize>()
    }

    fn height(&self) -> usize {
        self.shape[1]
    }

    fn width(&self) -> usize {
        self.shape[2]
    }

    /// The colour of pixel (`y`, `x`) of image `index` (grey repeated for one channel).
    fn rgb(&self, index: usize, y: usize, x: usize) -> [u8; 3] {
        let [c, h, w] = self.shape;
        let at = |ch: usize| {
            let v = self.pixels[((index * c + ch) * h + y) * w + x];
            (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() as u8
        };
        match c {
            1 => [at(0); 3],
            _ => [at(0), at(1), at(2)],
        }
    }
}

/// Draws the images in a grid of `cols` columns, each pixel `scale` x `scale`, with a
/// `pad`-pixel black border as torchvision's `make_grid`.
pub fn grid(images: Images, cols: usize, scale: usize, pad: usize) -> RgbImage {
    let n = images.count();
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let (cell_h, cell_w) = (images.height() * scale + pad, images.width() * scale + pad);
    let mut out = RgbImage::new((cols * cell_w + pad) as u32, (rows * cell_h + pad) as u32);
    for i in 0..n {
        let (oy, ox) = ((i / cols) * cell_h + pad, (i % cols) * cell_w + pad);
        for y in 0..images.height() * scale {
            for x in 0..images.width() * scale {
                let rgb = images.rgb(i, y / scale, x / scale);
                out.put_pixel((ox + x) as u32, (oy + y) as u32, Rgb(rgb));
            }
        }
    }
    out
}

/// Saves an image as PNG, atomically.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let bytes = png_bytes(image).map_err(|e| Error::bad_file(path, e))?;
    write_atomic(path, &bytes)
}

/// The bytes of an image as PNG (the error says why it could not be encoded).
pub fn png_bytes(image: &RgbImage) -> std::result::Result<Vec<u8>, String> {
    let mut bytes = Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, ImageFormat::Png)
        .map_err(|e| format!("cannot encode PNG: {e}"))?;
    Ok(bytes.into_inner())
}

/// Most tiles a sample grid shows; larger sample sets go to a tensor file as well.
pub const GRID_MAX_TILES: usize = 1024;

/// Writes the sample grid PNG (square-ish: `ceil(sqrt(n))` columns, 2 px padding).
pub fn save_grid(images: Images, path: &Path) -> Result<()> {
    let cols = (images.count() as f64).sqrt().ceil() as usize;
    save_png(&grid(images, cols, 1, 2), path)
}

/// Puts `label` above `picture` on a white band `band` pixels high.
fn with_label(picture: &RgbImage, label: &str, band: u32) -> Result<RgbImage> {
    register_font();
    let (w, h) = picture.dimensions();
    let mut out = RgbImage::from_pixel(w, h + band, Rgb([255, 255, 255]));
    image::imageops::overlay(&mut out, picture, 0, band as i64);
    {
        let area = BitMapBackend::with_buffer(out.as_mut(), (w, h + band)).into_drawing_area();
        let style = TextStyle::from((FONT, band as f64 * 0.7).into_font())
            .color(&BLACK)
            .pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Center,
                plotters::style::text_anchor::VPos::Center,
            ));
        area.draw_text(label, &style, ((w / 2) as i32, (band / 2) as i32))
            .map_err(|e| Error::invalid("label", e.to_string()))?;
        area.present()
            .map_err(|e| Error::invalid("label", e.to_string()))?;
    }
    Ok(out)
}

/// A frame's title: its time; for a two-frame trajectory (a one-step model, which jumps from
/// noise to image) also what the frame is.
fn frame_title(t: f32, frames: usize) -> String {
    match (frames, t == 1.0) {
        (2, true) => "t=1.00 noise".into(),
        (2, false) => format!("t={t:.2} one step"),
        _ => format!("t={t:.2}"),
    }
}

/// One frame of a trajectory: its time and the images at that time.
#[derive(Debug, Clone)]
pub struct TrajectoryFrame {
    /// The time t of the frame (1 = noise, 0 = data).
    pub t: f32,
    /// `[count, h, w]` values.
    pub pixels: Vec<f32>,
}

/// A strip with one column per frame (titled `t=0.80`) and one row per sample of `shape`.
pub fn save_trajectory_strip(
    frames: &[TrajectoryFrame],
    shape: [usize; 3],
    path: &Path,
) -> Result<()> {
    let scale = 3;
    let columns = frames
        .iter()
        .map(|f| {
            let images = Images {
                pixels: &f.pixels,
                shape,
            };
            with_label(
                &grid(images, 1, scale, 2),
                &frame_title(f.t, frames.len()),
                24,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (cw, ch) = columns.first().map(|c| c.dimensions()).unwrap_or((1, 1));
    let mut strip = RgbImage::from_pixel(cw * columns.len() as u32, ch, Rgb([255, 255, 255]));
    for (i, column) in columns.iter().enumerate() {
        image::imageops::overlay(&mut strip, column, (i as u32 * cw) as i64, 0);
    }
    save_png(&strip, path)
}

/// An animated GIF of the whole flow: one frame per state, each a labelled grid of images of
/// `shape`; the last frame is held longer. A two-frame trajectory (a one-step model) says so.
pub fn save_trajectory_gif(
    frames: &[TrajectoryFrame],
    shape: [usize; 3],
    path: &Path,
) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 10);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| Error::bad_file(path, format!("cannot encode GIF: {e}")))?;
        for (i, f) in frames.iter().enumerate() {
            let images = Images {
                pixels: &f.pixels,
                shape,
            };
            let cols = (images.count() as f64).sqrt().ceil() as usize;
            let picture = with_label(
                &grid(images, cols, 2, 2),
                &frame_title(f.t, frames.len()),
                24,
            )?;
            let rgba: RgbaImage = image::DynamicImage::ImageRgb8(picture).into_rgba8();
            let ms = if i + 1 == frames.len() { 1500 } else { 80 };
            encoder
                .encode_frame(Frame::from_parts(
                    rgba,
                    0,
                    0,
                    Delay::from_numer_denom_ms(ms, 1),
                ))
                .map_err(|e| Error::bad_file(path, format!("cannot encode GIF: {e}")))?;
        }
    }
    write_atomic(path, &bytes)
}

/// Plots the per-step loss and the per-epoch mean loss (at the step that ended the epoch).
pub fn loss_curve(
    step_losses: &[(u64, f32)],
    epoch_losses: &[(u64, f32)],
    path: &Path,
) -> Result<()> {
    register_font();
    let (w, h) = (900u32, 500u32);
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    let plot_err = |e: &dyn std::fmt::Display| {
        Error::bad_file(path, format!("cannot draw the loss curve: {e}"))
    };
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let finite = step_losses.iter().map(|p| p.1).filter(|l| l.is_finite());
        let y_max = finite.clone().fold(f32::MIN, f32::max).max(1e-3) * 1.05;
        let y_min = finite.fold(f32::MAX, f32::min).min(y_max * 0.5) * 0.95;
        let x_max = step_losses.last().map_or(1, |p| p.0).max(1);
        let mut chart = ChartBuilder::on(&area)
            .caption("flow-matching loss (velocity MSE)", (FONT, 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0u64..x_max, y_min..y_max)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .x_desc("step")
            .y_desc("loss")
            .label_style((FONT, 14))
            .draw()
            .map_err(|e| plot_err(&e))?;
        let light = RGBColor(150, 180, 230);
        chart
            .draw_series(LineSeries::new(step_losses.iter().copied(), light))
            .map_err(|e| plot_err(&e))?
            .label("per step")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], light));
        chart
            .draw_series(LineSeries::new(
                epoch_losses.iter().copied(),
                RED.stroke_width(2),
            ))
            .map_err(|e| plot_err(&e))?
            .label("epoch mean")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .draw_series(
                epoch_losses
                    .iter()
                    .map(|&p| Circle::new(p, 3, RED.filled())),
            )
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        area.present().map_err(|e| plot_err(&e))?;
    }
    let image = RgbImage::from_raw(w, h, buffer).expect("buffer matches the image size");
    save_png(&image, path)
}

/// One curve for [`quality_plot`]: (x, classifier-FID, confident fraction) points.
#[derive(Debug, Clone)]
pub struct QualityCurve {
    /// Legend (a solver, a recipe and NFE, ...).
    pub label: String,
    /// Points in increasing x.
    pub points: Vec<(f64, f64, f64)>,
}

/// Two panels against NFE on a log scale: classifier-FID (left) and confident fraction (right),
/// one line per solver, with the real-data floor as a grey line (Inception features, whose
/// floor has a NaN confident fraction: the FID panel alone).
pub fn quality_plot(
    curves: &[QualityCurve],
    floor_fid: f64,
    floor_confident: f64,
    path: &Path,
) -> Result<()> {
    let ticks: Vec<f64> = (0..12).map(|k| 2f64.powi(k)).collect();
    curves_plot(
        curves,
        ("NFE (log scale)", &ticks),
        floor_fid,
        floor_confident,
        path,
    )
}

/// [`quality_plot`] against training time: one line per recipe and NFE.
pub fn budget_plot(
    curves: &[QualityCurve],
    floor_fid: f64,
    floor_confident: f64,
    path: &Path,
) -> Result<()> {
    let ticks = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 240.0, 480.0];
    let axis = ("training minutes on 2 cores (log scale)", &ticks[..]);
    curves_plot(curves, axis, floor_fid, floor_confident, path)
}

/// One panel of [`curves_plot`]: what it shows of a point `(x, cFID, confident)` and how.
struct Panel {
    title: &'static str,
    range: (f64, f64),
    pick: fn(&(f64, f64, f64)) -> f64,
    floor: f64,
    label: fn(&f64) -> String,
    legend: SeriesLabelPosition,
}

/// Two panels, classifier-FID and confident fraction, against `x` (label, ticks) on a log
/// scale, with the real-data floor as a grey line; the FID panel alone for Inception features
/// (a NaN confident fraction of the floor).
fn curves_plot(
    curves: &[QualityCurve],
    (x_label, x_ticks): (&str, &[f64]),
    floor_fid: f64,
    floor_confident: f64,
    path: &Path,
) -> Result<()> {
    register_font();
    let (w, h) = (1200u32, 500u32);
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    let err =
        |e: &dyn std::fmt::Display| Error::bad_file(path, format!("cannot draw the plot: {e}"));
    let all = || curves.iter().flat_map(|c| c.points.iter());
    let nfe_min = all().map(|p| p.0).fold(f64::MAX, f64::min).max(1e-3) / 1.3;
    let nfe_max = all().map(|p| p.0).fold(1e-3, f64::max) * 1.3;
    // cFID spans decades (a 1-step sample of a 50-step model against the floor): its panel
    // is drawn on log10 values, labelled with the values themselves.
    let fid_max = all().map(|p| p.1).fold(floor_fid, f64::max) * 1.3;
    let fid_min = all().map(|p| p.1).fold(floor_fid, f64::min) / 1.3;
    let ticks: Vec<f64> = x_ticks
        .iter()
        .copied()
        .filter(|t| (nfe_min..=nfe_max).contains(t))
        .collect();
    let palette = [
        RED,
        BLUE,
        RGBColor(0, 150, 0),
        MAGENTA,
        RGBColor(230, 140, 0),
        CYAN,
        BLACK,
        RGBColor(140, 86, 75),
        RGBColor(148, 103, 189),
        RGBColor(188, 189, 34),
        RGBColor(255, 152, 150),
        RGBColor(23, 190, 207),
        RGBColor(0, 110, 90),
        RGBColor(0, 0, 128),
    ];
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| err(&e))?;
        // Inception features have no classes (the floor's confident fraction is NaN): the FID
        // panel alone.
        let classes = !floor_confident.is_nan();
        let panels = area.split_evenly((1, if classes { 2 } else { 1 }));
        let specs = [
            Panel {
                title: match classes {
                    true => "classifier-FID (lower is better; log scale)",
                    false => "FID, Inception features (lower is better; log scale)",
                },
                range: (fid_min.max(1e-6).log10(), fid_max.max(1e-5).log10()),
                pick: |p| p.1.max(1e-6).log10(),
                floor: floor_fid.max(1e-6).log10(),
                label: |v| format!("{:.0}", 10f64.powf(*v)),
                legend: SeriesLabelPosition::UpperRight,
            },
            Panel {
                title: "confident fraction (p >= 0.9)",
                range: (0.0, 1.0),
                pick: |p| p.2,
                floor: floor_confident,
                label: |v| format!("{v:.1}"),
                legend: SeriesLabelPosition::LowerRight,
            },
        ];
        for (panel, spec) in panels.iter().zip(specs) {
            let Panel {
                title,
                range: (y_min, y_max),
                pick,
                floor,
                label: y_label,
                legend,
            } = spec;
            let mut chart = ChartBuilder::on(panel)
                .caption(title, (FONT, 20))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(
                    (nfe_min..nfe_max)
                        .log_scale()
                        .with_key_points(ticks.clone()),
                    y_min..y_max,
                )
                .map_err(|e| err(&e))?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .x_labels(8)
                .x_label_formatter(&|v| format!("{v}"))
                .y_label_formatter(&y_label)
                .label_style((FONT, 13))
                .light_line_style(WHITE)
                .draw()
                .map_err(|e| err(&e))?;
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(
                    [(nfe_min, floor), (nfe_max, floor)],
                    grey.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label("real data (floor)")
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                });
            for (curve, color) in curves.iter().zip(palette.iter().cycle()) {
                let points: Vec<(f64, f64)> = curve.points.iter().map(|p| (p.0, pick(p))).collect();
                let color = *color;
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(curve.label.clone())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(
                        points
                            .into_iter()
                            .map(|p| Circle::new(p, 3, color.filled())),
                    )
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .position(legend)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
        area.present().map_err(|e| err(&e))?;
    }
    let image = RgbImage::from_raw(w, h, buffer).expect("buffer matches the image size");
    save_png(&image, path)
}

/// 2-D points to draw with [`scatter_plot`]: a legend, a colour and the points.
#[derive(Debug, Clone)]
pub struct PointSet {
    /// Legend.
    pub label: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// The points `(x, y)`.
    pub points: Vec<[f32; 2]>,
}

/// A scatter plot of 2-D point sets (data against samples, say) with `paths` (the flow of a
/// few points from noise to data) drawn as grey lines, written to `path` as a PNG.
pub fn scatter_plot(
    title: &str,
    sets: &[PointSet],
    paths: &[Vec<[f32; 2]>],
    path: &Path,
) -> Result<()> {
    register_font();
    let (w, h) = (800u32, 800u32);
    let mut buffer = vec![255u8; (w * h * 3) as usize];
    let plot_err =
        |e: &dyn std::fmt::Display| Error::bad_file(path, format!("cannot draw the plot: {e}"));
    let all = sets
        .iter()
        .flat_map(|s| s.points.iter())
        .chain(paths.iter().flatten());
    let finite: Vec<[f32; 2]> = all
        .filter(|p| p[0].is_finite() && p[1].is_finite())
        .copied()
        .collect();
    let extent = finite
        .iter()
        .fold(1.0f32, |m, p| m.max(p[0].abs()).max(p[1].abs()))
        * 1.05;
    {
        let area = BitMapBackend::with_buffer(&mut buffer, (w, h)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| plot_err(&e))?;
        let mut chart = ChartBuilder::on(&area)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(-extent..extent, -extent..extent)
            .map_err(|e| plot_err(&e))?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| plot_err(&e))?;
        let grey = RGBColor(120, 120, 120);
        for line in paths {
            let points = line.iter().map(|p| (p[0], p[1]));
            chart
                .draw_series(LineSeries::new(points, grey.stroke_width(1)))
                .map_err(|e| plot_err(&e))?;
        }
        for set in sets {
            let color = RGBColor(set.color[0], set.color[1], set.color[2]);
            let points = set
                .points
                .iter()
                .filter(|p| p[0].is_finite() && p[1].is_finite());
            chart
                .draw_series(points.map(|p| Circle::new((p[0], p[1]), 2, color.mix(0.6).filled())))
                .map_err(|e| plot_err(&e))?
                .label(set.label.clone())
                .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 15))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_err(&e))?;
        area.present().map_err(|e| plot_err(&e))?;
    }
    let image = RgbImage::from_raw(w, h, buffer).expect("buffer matches the image size");
    save_png(&image, path)
}

/// Row-major `[n, 2]` values as 2-D points.
pub fn points_2d(values: &[f32]) -> Vec<[f32; 2]> {
    values.chunks_exact(2).map(|p| [p[0], p[1]]).collect()
}

/// The path of each 2-D point through trajectory `frames` (frames of `[n, 2]` values).
pub fn paths_2d(frames: &[TrajectoryFrame]) -> Vec<Vec<[f32; 2]>> {
    let n = frames.first().map_or(0, |f| f.pixels.len() / 2);
    (0..n)
        .map(|i| {
            frames
                .iter()
                .map(|f| [f.pixels[2 * i], f.pixels[2 * i + 1]])
                .collect()
        })
        .collect()
}
