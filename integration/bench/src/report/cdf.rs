//! Chart (b): the cumulative distribution of fault service latency for one link, one line per
//! strategy, over one workload or all workloads merged.

use super::analysis::Evaluation;
use super::format::si_tick_label;
use super::rows::{Link, Row, Strategy};
use super::svg::{
    legend, strategy_colour, Anchor, LegendMark, LogAxis, Stroke, Svg, TextStyle, AXIS_COLOUR,
    GRID_COLOUR,
};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = WIDTH - 230.0;
const TOP: f64 = 62.0;
const BOTTOM: f64 = HEIGHT - 62.0;

/// Whose faults a CDF chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CdfSource<'a> {
    /// Every workload's faults in one distribution, each workload weighted by its fault count.
    AllMerged,
    Workload(&'a str),
}

impl CdfSource<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            CdfSource::AllMerged => "all workloads merged, weighted by fault count".into(),
            CdfSource::Workload(w) => format!("workload {w}"),
        }
    }

    fn includes(&self, row: &Row) -> bool {
        match self {
            CdfSource::AllMerged => true,
            CdfSource::Workload(w) => row.workload == *w,
        }
    }
}

/// One distribution from several rows' CDFs: at every latency any of them lists, the mean of
/// their cumulative fractions weighted by fault count. Each input CDF is read as a step
/// function (the fraction of its last point at or below the latency, 0 before its first).
/// Rows without faults or without points carry no weight.
pub(crate) fn merge(rows: &[&Row]) -> Vec<(f64, f64)> {
    let inputs: Vec<(&[(f64, f64)], f64)> = rows
        .iter()
        .filter(|r| r.faults > 0 && !r.fault_latency_cdf.is_empty())
        .map(|r| (r.fault_latency_cdf.as_slice(), r.faults as f64))
        .collect();
    let total_weight: f64 = inputs.iter().map(|(_, w)| w).sum();
    let mut latencies: Vec<f64> = inputs
        .iter()
        .flat_map(|(points, _)| points.iter().map(|p| p.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies.dedup();
    latencies
        .into_iter()
        .map(|x| {
            let weighted: f64 = inputs
                .iter()
                .map(|(points, w)| {
                    let at_or_below = points.partition_point(|p| p.0 <= x);
                    let fraction = at_or_below.checked_sub(1).map_or(0.0, |i| points[i].1);
                    w * fraction
                })
                .sum();
            (x, weighted / total_weight)
        })
        .collect()
}

/// The chart for `link`, or None when no row over it has latency points.
pub(crate) fn render(eval: &Evaluation, link: Link, source: CdfSource) -> Option<String> {
    let mut lines = Vec::new();
    let mut without_faults = Vec::new();
    for strategy in Strategy::ALL {
        let rows: Vec<&Row> = eval
            .groups_of(link)
            .filter_map(|g| g.row(strategy))
            .filter(|r| source.includes(r))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let points = merge(&rows);
        if points.is_empty() {
            without_faults.push(strategy.name());
        } else {
            lines.push((strategy, points));
        }
    }
    if lines.is_empty() {
        return None;
    }
    let latencies = || lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.0));
    let max = latencies().fold(0f64, f64::max);
    let min_positive = latencies()
        .filter(|&x| x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let min = if min_positive.is_finite() {
        min_positive
    } else {
        1.0
    };
    let x_axis = LogAxis::covering(min, max.max(min), LEFT, RIGHT);
    let y_px = |fraction: f64| BOTTOM - fraction * (BOTTOM - TOP);

    let title = format!("Fault service latency CDF, link: {}", link.name());
    let mut svg = Svg::chart(
        WIDTH,
        HEIGHT,
        LEFT,
        &title,
        &format!("{}; latency on a log scale", source.describe()),
    );
    draw_axes(&mut svg, &x_axis, y_px);

    for (strategy, points) in &lines {
        // Rise from 0 at the first latency so each line starts on the axis.
        let start = (x_axis.px(points[0].0), y_px(0.0));
        let path: Vec<(f64, f64)> = std::iter::once(start)
            .chain(points.iter().map(|&(x, f)| (x_axis.px(x), y_px(f))))
            .collect();
        let stroke = Stroke {
            colour: strategy_colour(*strategy),
            width: if *strategy == Strategy::Thaw {
                3.0
            } else {
                2.0
            },
            dash: None,
        };
        svg.polyline(&path, stroke, Some(strategy.name()));
    }

    let entries: Vec<(LegendMark, String)> = lines
        .iter()
        .map(|(s, _)| {
            let stroke = Stroke {
                colour: strategy_colour(*s),
                width: if *s == Strategy::Thaw { 3.0 } else { 2.0 },
                dash: None,
            };
            (LegendMark::Line(stroke), s.name().to_string())
        })
        .collect();
    legend(&mut svg, RIGHT + 24.0, TOP, &entries);
    if !without_faults.is_empty() {
        let y = TOP + 20.0 * entries.len() as f64 + 16.0;
        svg.text(
            (RIGHT + 24.0, y),
            TextStyle::plain(12.0, Anchor::Start),
            &format!("no faults: {}", without_faults.join(", ")),
        );
    }
    Some(svg.finish())
}

fn draw_axes(svg: &mut Svg, x_axis: &LogAxis, y_px: impl Fn(f64) -> f64) {
    let axis_stroke = Stroke {
        colour: AXIS_COLOUR,
        width: 1.0,
        dash: None,
    };
    let grid = Stroke {
        colour: GRID_COLOUR,
        width: 1.0,
        dash: None,
    };
    for tenth in 0..=10 {
        let fraction = f64::from(tenth) / 10.0;
        let y = y_px(fraction);
        svg.line((LEFT, y), (RIGHT, y), grid);
        svg.line((LEFT - 5.0, y), (LEFT, y), axis_stroke);
        svg.text(
            (LEFT - 9.0, y + 4.0),
            TextStyle::plain(12.0, Anchor::End),
            &format!("{fraction:.1}"),
        );
    }
    for tick in x_axis.ticks(si_tick_label) {
        let x = x_axis.px(tick.value);
        if tick.major {
            svg.line((x, TOP), (x, BOTTOM), grid);
        }
        let length = if tick.major { 6.0 } else { 3.0 };
        svg.line((x, BOTTOM), (x, BOTTOM + length), axis_stroke);
        if let Some(label) = &tick.label {
            svg.text(
                (x, BOTTOM + 20.0),
                TextStyle::plain(12.0, Anchor::Middle),
                label,
            );
        }
    }
    svg.line((LEFT, TOP), (LEFT, BOTTOM), axis_stroke);
    svg.line((LEFT, BOTTOM), (RIGHT, BOTTOM), axis_stroke);
    svg.text(
        ((LEFT + RIGHT) / 2.0, BOTTOM + 44.0),
        TextStyle::plain(13.0, Anchor::Middle),
        "fault service latency (µs)",
    );
    svg.text(
        (20.0, (TOP + BOTTOM) / 2.0),
        TextStyle {
            rotate: -90.0,
            ..TextStyle::plain(13.0, Anchor::Middle)
        },
        "fraction of faults served",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analysis::tests::row;

    fn with_cdf(faults: u64, cdf: &[(f64, f64)]) -> Row {
        let mut r = row("w", Link::Rack, Strategy::Thaw, 2.0, 0.1);
        r.faults = faults;
        r.fault_latency_cdf = cdf.to_vec();
        r
    }

    #[test]
    fn one_row_merges_to_itself() {
        let a = with_cdf(10, &[(10.0, 0.5), (20.0, 1.0)]);
        assert_eq!(merge(&[&a]), vec![(10.0, 0.5), (20.0, 1.0)]);
    }

    #[test]
    fn merging_weights_by_fault_count() {
        let a = with_cdf(300, &[(10.0, 0.5), (20.0, 1.0)]);
        let b = with_cdf(100, &[(15.0, 1.0)]);
        let empty = with_cdf(0, &[]);
        let merged = merge(&[&a, &b, &empty]);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[0], (10.0, 0.375)); // 300·0.5 / 400
        assert_eq!(merged[1], (15.0, 0.625)); // (300·0.5 + 100·1) / 400
        assert_eq!(merged[2], (20.0, 1.0));
        assert!(merge(&[&empty]).is_empty());
    }

    #[test]
    fn strategies_without_faults_are_named_not_drawn() {
        let mut eager = row("w", Link::Rack, Strategy::Eager, 3.0, 1.0);
        eager.faults = 0;
        let rows = vec![eager, with_cdf(5, &[(30.0, 0.2), (900.0, 1.0)])];
        let eval = Evaluation::new(&rows).unwrap();
        let svg = render(&eval, Link::Rack, CdfSource::AllMerged).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("no faults: eager"));
        assert!(render(&eval, Link::Rack, CdfSource::Workload("other")).is_none());
    }
}
