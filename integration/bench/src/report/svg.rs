//! A small SVG writer for the page's charts: shapes, text, a log axis, a legend and the colour
//! of each strategy. Coordinates are written with one decimal so output is byte-stable.

use std::fmt::Write as _;

use super::format::xml_escape;
use super::rows::Strategy;

pub(crate) const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";
pub(crate) const AXIS_COLOUR: &str = "#333333";
pub(crate) const GRID_COLOUR: &str = "#e3e3e3";
pub(crate) const BASELINE_COLOUR: &str = "#000000";

/// One colour per strategy, told apart by hue and by lightness (simple strategies light/warm,
/// thaw a strong purple).
pub(crate) fn strategy_colour(s: Strategy) -> &'static str {
    match s {
        Strategy::Eager => "#8c8c8c",
        Strategy::Lazy4k => "#d62728",
        Strategy::FixedBlocks => "#ff7f0e",
        Strategy::Locality => "#bcbd22",
        Strategy::LocalityPrefetch => "#17becf",
        Strategy::LocalityPrefetchStream => "#1f77b4",
        Strategy::Oracle => "#2ca02c",
        Strategy::Thaw => "#7b2d9e",
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// How a line is drawn.
#[derive(Clone, Copy)]
pub(crate) struct Stroke<'a> {
    pub colour: &'a str,
    pub width: f64,
    /// An SVG dash array such as "6 3", or None for a solid line.
    pub dash: Option<&'a str>,
}

impl Stroke<'_> {
    fn attributes(&self) -> String {
        let dash = self
            .dash
            .map(|d| format!(r#" stroke-dasharray="{d}""#))
            .unwrap_or_default();
        format!(
            r#"stroke="{}" stroke-width="{:.1}"{dash}"#,
            self.colour, self.width
        )
    }
}

/// Text placement and look.
#[derive(Clone, Copy)]
pub(crate) struct TextStyle {
    pub size: f64,
    pub anchor: Anchor,
    pub bold: bool,
    /// Degrees, about the text's anchor point.
    pub rotate: f64,
}

impl TextStyle {
    pub(crate) const fn plain(size: f64, anchor: Anchor) -> Self {
        TextStyle {
            size,
            anchor,
            bold: false,
            rotate: 0.0,
        }
    }
}

/// An SVG document under construction.
pub(crate) struct Svg {
    out: String,
}

impl Svg {
    /// A `width` × `height` document on a white background (charts stay readable in dark
    /// themes and when converted to PNG).
    pub(crate) fn new(width: f64, height: f64, title: &str) -> Self {
        let mut out = String::new();
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="{FONT}">"#
        );
        let _ = writeln!(out, "<title>{}</title>", xml_escape(title));
        let _ = writeln!(
            out,
            r##"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="#ffffff"/>"##
        );
        Svg { out }
    }

    /// A chart's document: `title` in bold, then `subtitle` in a line under it, both from
    /// `left`, the chart's left edge.
    pub(crate) fn chart(width: f64, height: f64, left: f64, title: &str, subtitle: &str) -> Self {
        let mut svg = Svg::new(width, height, title);
        svg.text(
            (left, 26.0),
            TextStyle {
                bold: true,
                ..TextStyle::plain(16.0, Anchor::Start)
            },
            title,
        );
        svg.text(
            (left, 46.0),
            TextStyle::plain(12.0, Anchor::Start),
            subtitle,
        );
        svg
    }

    pub(crate) fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: Stroke) {
        let _ = writeln!(
            self.out,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {}/>"#,
            stroke.attributes()
        );
    }

    /// A filled rectangle; `tooltip` becomes its `<title>` (shown on hover in browsers).
    pub(crate) fn rect(
        &mut self,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        fill: &str,
        tooltip: Option<&str>,
    ) {
        let _ = write!(
            self.out,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{fill}""#
        );
        match tooltip {
            Some(t) => {
                let _ = writeln!(self.out, "><title>{}</title></rect>", xml_escape(t));
            }
            None => self.out.push_str("/>\n"),
        }
    }

    pub(crate) fn polyline(
        &mut self,
        points: &[(f64, f64)],
        stroke: Stroke,
        tooltip: Option<&str>,
    ) {
        let mut coords = String::new();
        for (i, (x, y)) in points.iter().enumerate() {
            if i > 0 {
                coords.push(' ');
            }
            let _ = write!(coords, "{x:.1},{y:.1}");
        }
        let _ = write!(
            self.out,
            r#"<polyline points="{coords}" fill="none" stroke-linejoin="round" {}"#,
            stroke.attributes()
        );
        match tooltip {
            Some(t) => {
                let _ = writeln!(self.out, "><title>{}</title></polyline>", xml_escape(t));
            }
            None => self.out.push_str("/>\n"),
        }
    }

    pub(crate) fn text(&mut self, (x, y): (f64, f64), style: TextStyle, content: &str) {
        let weight = if style.bold {
            r#" font-weight="bold""#
        } else {
            ""
        };
        let rotate = if style.rotate != 0.0 {
            format!(r#" transform="rotate({:.1} {x:.1} {y:.1})""#, style.rotate)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{:.1}" text-anchor="{}" fill="{AXIS_COLOUR}"{weight}{rotate}>{}</text>"#,
            style.size,
            style.anchor.name(),
            xml_escape(content)
        );
    }

    pub(crate) fn finish(mut self) -> String {
        self.out.push_str("</svg>\n");
        self.out
    }
}

/// A base-10 logarithmic axis between two "nice" values (1, 2 or 5 times a power of ten),
/// mapping values to pixels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogAxis {
    low: f64,
    high: f64,
    /// Pixel of the axis' low end and high end (high may be smaller, as on a y axis).
    low_px: f64,
    high_px: f64,
}

/// A tick on an axis: where, and its label if it has one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tick {
    pub value: f64,
    pub label: Option<String>,
    /// A power of ten (drawn longer, with a grid line).
    pub major: bool,
}

/// Relative slack for comparing tick values computed in floating point.
const SLACK: f64 = 1e-9;
const NICE_STEPS: [f64; 3] = [1.0, 2.0, 5.0];

fn decade_of(v: f64) -> i32 {
    (v.log10() + SLACK).floor() as i32
}

/// The largest 1, 2 or 5 × 10^k at or below `v`.
fn nice_floor(v: f64) -> f64 {
    let decade = 10f64.powi(decade_of(v));
    NICE_STEPS
        .iter()
        .rev()
        .map(|m| m * decade)
        .find(|&n| n <= v * (1.0 + SLACK))
        .unwrap_or(decade)
}

/// The smallest 1, 2 or 5 × 10^k at or above `v`.
fn nice_ceil(v: f64) -> f64 {
    let decade = 10f64.powi(decade_of(v));
    NICE_STEPS
        .iter()
        .map(|m| m * decade)
        .find(|&n| n >= v * (1.0 - SLACK))
        .unwrap_or(10.0 * decade)
}

impl LogAxis {
    /// The narrowest nice span holding `min..=max` (0 < min ≤ max).
    pub(crate) fn covering(min: f64, max: f64, low_px: f64, high_px: f64) -> Self {
        let low = nice_floor(min);
        let mut high = nice_ceil(max);
        if high <= low * (1.0 + SLACK) {
            high = nice_ceil(low * (1.0 + 1e-3));
        }
        LogAxis {
            low,
            high,
            low_px,
            high_px,
        }
    }

    #[cfg(test)]
    fn low(&self) -> f64 {
        self.low
    }

    /// Pixel of `v`, clamped to the axis (values ≤ 0 go to its low end).
    pub(crate) fn px(&self, v: f64) -> f64 {
        let span = (self.high / self.low).log10();
        let t = if v > 0.0 {
            ((v / self.low).log10() / span).clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.low_px + t * (self.high_px - self.low_px)
    }

    /// A tick at every m × 10^k (m = 1..9) on the axis. Powers of ten and both ends are
    /// labelled; so are 2 and 5 × 10^k when the axis spans at most two decades (more would
    /// crowd). `label` writes a tick value.
    pub(crate) fn ticks(&self, label: fn(f64) -> String) -> Vec<Tick> {
        let label_minor = (self.high / self.low).log10() <= 2.0 + SLACK;
        let on_axis = |v: f64| v >= self.low * (1.0 - SLACK) && v <= self.high * (1.0 + SLACK);
        let is_end =
            |v: f64| (v / self.low - 1.0).abs() < 1e-6 || (v / self.high - 1.0).abs() < 1e-6;
        let mut ticks = Vec::new();
        for e in decade_of(self.low)..=decade_of(self.high) {
            let decade = 10f64.powi(e);
            for m in 1..=9 {
                let value = f64::from(m) * decade;
                if !on_axis(value) {
                    continue;
                }
                let labelled = m == 1 || is_end(value) || (label_minor && (m == 2 || m == 5));
                ticks.push(Tick {
                    value,
                    label: labelled.then(|| label(value)),
                    major: m == 1,
                });
            }
        }
        ticks
    }
}

/// What a legend entry shows beside its text.
pub(crate) enum LegendMark<'a> {
    Swatch(&'a str),
    Line(Stroke<'a>),
}

/// A vertical legend whose first entry's top-left is at (`x`, `y`).
pub(crate) fn legend(svg: &mut Svg, x: f64, y: f64, entries: &[(LegendMark, String)]) {
    const ROW: f64 = 20.0;
    for (i, (mark, text)) in entries.iter().enumerate() {
        let top = y + ROW * i as f64;
        match mark {
            LegendMark::Swatch(colour) => svg.rect(x, top + 3.0, 14.0, 12.0, colour, None),
            LegendMark::Line(stroke) => svg.line((x, top + 9.0), (x + 22.0, top + 9.0), *stroke),
        }
        svg.text(
            (x + 28.0, top + 13.5),
            TextStyle::plain(12.0, Anchor::Start),
            text,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::format::{plain_tick_label, si_tick_label};

    fn labels(axis: &LogAxis, label: fn(f64) -> String) -> Vec<String> {
        axis.ticks(label)
            .into_iter()
            .filter_map(|t| t.label)
            .collect()
    }

    #[test]
    fn log_axis_ends_on_nice_values() {
        let axis = LogAxis::covering(2.3, 71.0, 400.0, 0.0);
        assert_eq!(axis.low(), 2.0);
        assert_eq!(axis.px(2.0), 400.0);
        assert_eq!(axis.px(100.0), 0.0);
        // Halfway up in log terms is the geometric mean of the ends.
        assert!((axis.px(200f64.sqrt()) - 200.0).abs() < 1e-9);
        assert_eq!(axis.px(0.0), 400.0);
        assert_eq!(axis.px(1e9), 0.0);
        assert_eq!(
            labels(&axis, plain_tick_label),
            ["2", "5", "10", "20", "50", "100"]
        );
        assert_eq!(axis.ticks(plain_tick_label).len(), 8 + 9 + 1);
    }

    #[test]
    fn wide_log_axes_label_decades_and_ends() {
        let axis = LogAxis::covering(0.8, 13.6, 0.0, 100.0);
        assert_eq!(
            labels(&axis, plain_tick_label),
            ["0.5", "1", "2", "5", "10", "20"]
        );
        let axis = LogAxis::covering(3.0, 20_000.0, 0.0, 100.0);
        assert_eq!(
            labels(&axis, si_tick_label),
            ["2", "10", "100", "1k", "10k", "20k"]
        );
    }

    #[test]
    fn a_single_value_gets_a_span() {
        let axis = LogAxis::covering(10.0, 10.0, 0.0, 100.0);
        assert_eq!(axis.low(), 10.0);
        assert_eq!(axis.px(20.0), 100.0);
    }

    #[test]
    fn text_is_escaped() {
        let mut svg = Svg::new(10.0, 10.0, "a<b");
        svg.text((1.0, 2.0), TextStyle::plain(12.0, Anchor::Start), "x&y");
        let out = svg.finish();
        assert!(out.contains("<title>a&lt;b</title>"));
        assert!(out.contains(">x&amp;y</text>"));
        assert!(out.ends_with("</svg>\n"));
    }
}
