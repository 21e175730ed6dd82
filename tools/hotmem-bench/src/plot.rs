//! SVG plots of benchmark results (plotters, SVG backend).
//!
//! Latencies span three orders of magnitude (HotMem's tens of ms next to
//! vanilla's seconds), so their axes are logarithmic; every point is a
//! median with its min–max range drawn as a vertical bar.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

/// A plot that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plotting {path}: {message}")]
pub struct PlotError {
    /// Output file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

/// A point: the median `y` of the samples at `x` and their range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Abscissa.
    pub x: f64,
    /// Median (or the single value).
    pub y: f64,
    /// Smallest sample.
    pub lo: f64,
    /// Largest sample.
    pub hi: f64,
}

impl Point {
    /// A single value (no range).
    pub fn exact(x: f64, y: f64) -> Self {
        Self { x, y, lo: y, hi: y }
    }
}

/// One named series of points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<Point>,
}

/// An axis' scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// Logarithmic (non-positive values are not drawn).
    Log,
}

/// Title and axes of a chart.
#[derive(Debug, Clone, Copy)]
pub struct Axes<'a> {
    /// Caption.
    pub title: &'a str,
    /// X axis label.
    pub x_desc: &'a str,
    /// Y axis label.
    pub y_desc: &'a str,
    /// X scale.
    pub x: Scale,
    /// Y scale.
    pub y: Scale,
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Padded axis range covering `values` (from 0 if `from_zero`).
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (if from_zero { lo } else { lo - pad }, hi + pad)
}

/// Padded range of the positive `values` for a log axis.
fn log_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite() && *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 10.0);
    }
    (lo / 1.5, hi * 1.5)
}

/// Tick label: whole numbers from 10 on, else with a decimal or two.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws a line chart with markers, min–max bars and a legend to `path`
/// (SVG).
pub fn line_chart(path: &Path, axes: &Axes<'_>, series: &[Series]) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let xs_iter = || series.iter().flat_map(|s| s.points.iter().map(|p| p.x));
    let ys_iter = || {
        series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [p.y, p.lo, p.hi]))
    };
    let (x0, x1) = match axes.x {
        Scale::Linear => range(xs_iter(), false),
        Scale::Log => log_range(xs_iter()),
    };
    let (y0, y1) = match axes.y {
        Scale::Linear => range(ys_iter(), true),
        Scale::Log => log_range(ys_iter()),
    };
    let drawn = match (axes.x, axes.y) {
        (Scale::Linear, Scale::Linear) => draw_lines(&root, axes, series, x0..x1, y0..y1),
        (Scale::Linear, Scale::Log) => {
            draw_lines(&root, axes, series, x0..x1, (y0..y1).log_scale())
        }
        (Scale::Log, Scale::Linear) => {
            draw_lines(&root, axes, series, (x0..x1).log_scale(), y0..y1)
        }
        (Scale::Log, Scale::Log) => draw_lines(
            &root,
            axes,
            series,
            (x0..x1).log_scale(),
            (y0..y1).log_scale(),
        ),
    };
    drawn.map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

fn draw_lines<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    axes: &Axes<'_>,
    series: &[Series],
    x: X,
    y: Y,
) -> Result<(), String>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let log_y = axes.y == Scale::Log;
    let log_x = axes.x == Scale::Log;
    let shown = |p: &Point| (!log_y || p.y > 0.0) && (!log_x || p.x > 0.0);
    let mut chart = ChartBuilder::on(root)
        .caption(axes.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(axes.x_desc)
        .y_desc(axes.y_desc)
        .x_labels(12)
        .y_labels(12)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .draw()
        .map_err(|x| e(&x))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<Point> = s.points.iter().copied().filter(shown).collect();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.x, p.y)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.x, p.y), 4, color.filled())),
            )
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| p.hi > p.lo && (!log_y || p.lo > 0.0))
                    .map(|p| {
                        PathElement::new(vec![(p.x, p.lo), (p.x, p.hi)], color.stroke_width(1))
                    }),
            )
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))
}

/// A bar: label, median and min–max.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label under the bar.
    pub label: String,
    /// Median (the bar's height).
    pub value: Point,
}

/// Draws a bar chart of medians with min–max whiskers on a log axis to
/// `path` (SVG); `Point::x` of the bars is ignored.
pub fn bar_chart(path: &Path, title: &str, y_desc: &str, bars: &[Bar]) -> Result<(), PlotError> {
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(path, e))?;
    let (y0, y1) = log_range(
        bars.iter()
            .flat_map(|b| [b.value.y, b.value.lo, b.value.hi]),
    );
    let n = bars.len().max(1);
    let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, (y0..y1).log_scale())
        .map_err(|e| err(path, e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&tick)
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(path, e))?;
    let positive: Vec<(usize, &Bar)> = bars
        .iter()
        .enumerate()
        .filter(|(_, b)| b.value.y > 0.0)
        .collect();
    chart
        .draw_series(positive.iter().map(|&(i, b)| {
            let color = COLORS[i % COLORS.len()];
            Rectangle::new(
                [(i as f64 + 0.2, y0), (i as f64 + 0.8, b.value.y)],
                color.filled(),
            )
        }))
        .map_err(|e| err(path, e))?;
    chart
        .draw_series(
            positive
                .iter()
                .filter(|(_, b)| b.value.hi > b.value.lo && b.value.lo > 0.0)
                .map(|&(i, b)| {
                    PathElement::new(
                        vec![(i as f64 + 0.5, b.value.lo), (i as f64 + 0.5, b.value.hi)],
                        BLACK.stroke_width(2),
                    )
                }),
        )
        .map_err(|e| err(path, e))?;
    chart
        .draw_series(positive.iter().map(|&(i, b)| {
            Text::new(
                format!("{:.1}", b.value.y),
                (i as f64 + 0.25, b.value.y),
                ("sans-serif", 15).into_font(),
            )
        }))
        .map_err(|e| err(path, e))?;
    root.present().map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg() {
        let dir = tempfile::tempdir().unwrap();
        let line = dir.path().join("l.svg");
        let series = [
            Series {
                name: "HotMem".into(),
                points: vec![
                    Point {
                        x: 128.0,
                        y: 10.0,
                        lo: 8.0,
                        hi: 14.0,
                    },
                    Point::exact(256.0, 12.0),
                ],
            },
            Series {
                name: "vanilla".into(),
                points: vec![Point::exact(128.0, 100.0), Point::exact(256.0, 3000.0)],
            },
        ];
        for (x, y) in [
            (Scale::Linear, Scale::Linear),
            (Scale::Linear, Scale::Log),
            (Scale::Log, Scale::Log),
        ] {
            let axes = Axes {
                title: "reclaim",
                x_desc: "MiB",
                y_desc: "ms",
                x,
                y,
            };
            line_chart(&line, &axes, &series).unwrap();
            let svg = std::fs::read_to_string(&line).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("HotMem") && svg.contains("vanilla"));
        }
        let bars = dir.path().join("b.svg");
        bar_chart(
            &bars,
            "cmp",
            "ms",
            &[
                Bar {
                    label: "a".into(),
                    value: Point {
                        x: 0.0,
                        y: 20.0,
                        lo: 15.0,
                        hi: 30.0,
                    },
                },
                Bar {
                    label: "b".into(),
                    value: Point::exact(0.0, 5000.0),
                },
            ],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&bars).unwrap().contains("<rect"));
    }

    #[test]
    fn axis_ranges() {
        assert_eq!(range(std::iter::empty(), true), (0.0, 1.0));
        assert_eq!(log_range(std::iter::empty()), (1.0, 10.0));
        // Non-positive values cannot be on a log axis.
        assert_eq!(log_range([0.0, 15.0, 3000.0].into_iter()), (10.0, 4500.0));
        assert_eq!(tick(&1000.0), "1000");
        assert_eq!(tick(&2.5), "2.5");
        assert_eq!(tick(&0.25), "0.25");
    }
}
