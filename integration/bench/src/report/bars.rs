//! Chart (a): time to finish per strategy, grouped by workload, for one link, on a log scale
//! (lazy-4k over the object store can take 30× the others), with each workload's baseline.

use super::analysis::Evaluation;
use super::format::{plain_tick_label, significant};
use super::rows::{Link, Strategy};
use super::svg::{
    legend, strategy_colour, Anchor, LegendMark, LogAxis, Stroke, Svg, TextStyle, AXIS_COLOUR,
    BASELINE_COLOUR, GRID_COLOUR,
};

const WIDTH: f64 = 1000.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = WIDTH - 230.0;
const TOP: f64 = 62.0;
const BOTTOM: f64 = TOP + 340.0;
/// Rough advance of one character of 12 px text.
const CHAR_WIDTH: f64 = 6.8;
/// Workload names too long for their slot are turned by this many degrees (clockwise).
const SLANT_DEGREES: f64 = 40.0;
/// Share of a workload's slot taken by its bars (the rest separates workloads).
const GROUP_FILL: f64 = 0.84;
const BASELINE_STROKE: Stroke = Stroke {
    colour: BASELINE_COLOUR,
    width: 1.6,
    dash: Some("6 3"),
};

/// The chart for `link`, or None when the evaluation has no rows over it.
pub(crate) fn render(eval: &Evaluation, link: Link) -> Option<String> {
    let groups: Vec<_> = eval.groups_of(link).collect();
    if groups.is_empty() {
        return None;
    }
    let values = groups
        .iter()
        .flat_map(|g| g.present().map(|r| r.time_to_finish_s))
        .chain(groups.iter().map(|g| g.baseline_s()));
    let (min, max) = values.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Room under the shortest bar, so that it still shows.
    let axis = LogAxis::covering(min / 1.5, max, BOTTOM, TOP);

    let slot = (RIGHT - LEFT) / groups.len() as f64;
    let bar = slot * GROUP_FILL / Strategy::COUNT as f64;
    let longest_name = groups
        .iter()
        .map(|g| g.workload.chars().count())
        .max()
        .unwrap_or(0) as f64;
    // Slant the names when they would run into each other, and make room for them below.
    let slant = longest_name * CHAR_WIDTH > slot - 6.0;
    let height = if slant {
        BOTTOM + 30.0 + longest_name * CHAR_WIDTH * SLANT_DEGREES.to_radians().sin()
    } else {
        BOTTOM + 40.0
    };

    let title = format!("Time to finish per strategy, link: {}", link.name());
    let mut svg = Svg::chart(
        WIDTH,
        height.ceil(),
        LEFT,
        &title,
        "log scale; dashed line: the workload's run time with all memory present",
    );
    draw_y_axis(&mut svg, &axis);

    for (i, group) in groups.iter().enumerate() {
        let first_bar = LEFT + slot * i as f64 + slot * (1.0 - GROUP_FILL) / 2.0;
        for row in group.present() {
            let x = first_bar + bar * row.strategy.index() as f64;
            let y = axis.px(row.time_to_finish_s);
            let tooltip = format!(
                "{} · {}: {} s to finish, {} s overhead",
                row.workload,
                row.strategy.name(),
                significant(row.time_to_finish_s, 4),
                significant(row.restore_overhead_s, 4)
            );
            svg.rect(
                x + 0.5,
                y,
                (bar - 1.0).max(1.0),
                BOTTOM - y,
                strategy_colour(row.strategy),
                Some(&tooltip),
            );
        }
        let baseline_y = axis.px(group.baseline_s());
        svg.line(
            (first_bar - 2.0, baseline_y),
            (first_bar + bar * Strategy::COUNT as f64 + 2.0, baseline_y),
            BASELINE_STROKE,
        );
        let centre = LEFT + slot * (i as f64 + 0.5);
        if slant {
            let style = TextStyle {
                rotate: SLANT_DEGREES,
                ..TextStyle::plain(12.0, Anchor::Start)
            };
            svg.text((centre - 4.0, BOTTOM + 14.0), style, group.workload);
        } else {
            let style = TextStyle::plain(12.0, Anchor::Middle);
            svg.text((centre, BOTTOM + 20.0), style, group.workload);
        }
    }
    svg.line(
        (LEFT, BOTTOM),
        (RIGHT, BOTTOM),
        Stroke {
            colour: AXIS_COLOUR,
            width: 1.0,
            dash: None,
        },
    );

    let mut entries: Vec<(LegendMark, String)> = Strategy::ALL
        .into_iter()
        .filter(|&s| groups.iter().any(|g| g.row(s).is_some()))
        .map(|s| (LegendMark::Swatch(strategy_colour(s)), s.name().to_string()))
        .collect();
    entries.push((
        LegendMark::Line(BASELINE_STROKE),
        "baseline (memory present)".into(),
    ));
    legend(&mut svg, RIGHT + 24.0, TOP, &entries);
    Some(svg.finish())
}

fn draw_y_axis(svg: &mut Svg, axis: &LogAxis) {
    let axis_stroke = Stroke {
        colour: AXIS_COLOUR,
        width: 1.0,
        dash: None,
    };
    for tick in axis.ticks(plain_tick_label) {
        let y = axis.px(tick.value);
        if tick.major {
            let grid = Stroke {
                colour: GRID_COLOUR,
                width: 1.0,
                dash: None,
            };
            svg.line((LEFT, y), (RIGHT, y), grid);
        }
        let length = if tick.major { 6.0 } else { 3.0 };
        svg.line((LEFT - length, y), (LEFT, y), axis_stroke);
        if let Some(label) = &tick.label {
            svg.text(
                (LEFT - 9.0, y + 4.0),
                TextStyle::plain(12.0, Anchor::End),
                label,
            );
        }
    }
    svg.line((LEFT, TOP), (LEFT, BOTTOM), axis_stroke);
    let middle = (TOP + BOTTOM) / 2.0;
    svg.text(
        (22.0, middle),
        TextStyle {
            rotate: -90.0,
            ..TextStyle::plain(13.0, Anchor::Middle)
        },
        "time to finish (s)",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analysis::tests::row;

    #[test]
    fn one_bar_per_row_and_one_baseline_per_workload() {
        let rows = vec![
            row("shell", Link::Rack, Strategy::Lazy4k, 3.0, 1.0),
            row("shell", Link::Rack, Strategy::Thaw, 2.1, 0.1),
            row("kv", Link::Rack, Strategy::Thaw, 5.0, 0.2),
            row("kv", Link::Region, Strategy::Thaw, 5.0, 0.2),
        ];
        let eval = Evaluation::new(&rows).unwrap();
        let svg = render(&eval, Link::Rack).unwrap();
        assert_eq!(svg.matches("s to finish").count(), 3);
        assert_eq!(svg.matches(r#"stroke-dasharray="6 3""#).count(), 2 + 1); // + legend
        assert!(svg.contains(">shell</text>") && svg.contains(">kv</text>"));
        assert!(render(&eval, Link::ObjectStore).is_none());
    }
}
