//! The overview's chart, drawn on the server as SVG: no script, no library,
//! nothing the Content-Security-Policy has to allow.

use maud::{html, Markup};

use crate::activity::Minute;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels.
const LEFT: f64 = 44.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

/// Accepted events, delivered and failed attempts per minute, oldest first;
/// `labels` name the first, middle and last minute.
pub fn per_minute(minutes: &[Minute], labels: [&str; 3], caption: &str) -> Markup {
    let series: [(&str, Vec<u64>); 3] = [
        ("accepted", minutes.iter().map(|m| m.accepted).collect()),
        ("delivered", minutes.iter().map(|m| m.delivered).collect()),
        ("failed", minutes.iter().map(|m| m.failed).collect()),
    ];
    let top = series
        .iter()
        .flat_map(|(_, values)| values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_w = WIDTH - LEFT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = plot_w / (minutes.len().max(2) - 1) as f64;
    let y = |v: u64| TOP + plot_h - plot_h * v as f64 / top as f64;
    let points = |values: &[u64]| {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", LEFT + step * i as f64, y(*v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let base = TOP + plot_h;
    html! {
        svg class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(caption) {
            title { (caption) }
            @for v in [0, top / 2, top] {
                line class="grid" x1=(LEFT) x2=(WIDTH) y1=(y(v)) y2=(y(v)) {}
                text class="axis" x=(LEFT - 6.0) y=(y(v) + 4.0) text-anchor="end" { (v) }
            }
            text class="axis" x=(LEFT) y=(HEIGHT - 4.0) text-anchor="start" { (labels[0]) }
            text class="axis" x=(LEFT + plot_w / 2.0) y=(HEIGHT - 4.0) text-anchor="middle" { (labels[1]) }
            text class="axis" x=(WIDTH) y=(HEIGHT - 4.0) text-anchor="end" { (labels[2]) }
            line class="baseline" x1=(LEFT) x2=(WIDTH) y1=(base) y2=(base) {}
            // Accepted as an area under the attempts' lines, so a line on
            // top of it never hides it.
            @let [(_, accepted), lines @ ..] = &series;
            polygon class="series accepted" points=(format!("{LEFT:.1},{base:.1} {} {WIDTH:.1},{base:.1}", points(accepted))) {}
            @for (name, values) in lines {
                polyline class=(format!("series {name}")) points=(points(values)) {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_point_touches_the_top_and_zero_the_baseline() {
        let minutes = [
            Minute {
                accepted: 0,
                delivered: 0,
                failed: 0,
            },
            Minute {
                accepted: 10,
                delivered: 4,
                failed: 1,
            },
        ];
        let svg = per_minute(&minutes, ["a", "b", "c"], "test").into_string();
        // Accepted: minute 0 on the baseline (y = 138), minute 1 at the top (y = 8).
        assert!(
            svg.contains(
                r#"class="series accepted" points="44.0,138.0 44.0,138.0 720.0,8.0 720.0,138.0""#
            ),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="series failed" points="44.0,138.0 720.0,125.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(">10</text>") && svg.contains(">5</text>"),
            "{svg}"
        );
    }
}
