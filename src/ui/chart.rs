//! Small server-rendered SVG bar charts of the last hour (one bar per minute, stacked series).
//! The markup is built from numbers only, through maud like every page.

use maud::{html, Markup};

const WIDTH: u32 = 150;
const HEIGHT: u32 = 36;

/// One series: its CSS class (colour) and one value per minute, oldest first.
pub struct Series<'a> {
    pub class: &'a str,
    pub label: &'a str,
    pub values: Vec<u64>,
}

/// Stacked bars, one per minute; the tallest minute fills the height.
pub fn bars(title: &str, series: &[Series<'_>]) -> Markup {
    let minutes = series
        .iter()
        .map(|s| s.values.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let totals: Vec<u64> = (0..minutes)
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().unwrap_or(0))
                .sum()
        })
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0);
    let step = f64::from(WIDTH) / minutes as f64;
    let scale = if max == 0 {
        0.0
    } else {
        f64::from(HEIGHT - 2) / max as f64
    };
    let mut rects = Vec::new();
    for i in 0..minutes {
        let mut top = f64::from(HEIGHT);
        for s in series {
            let value = s.values.get(i).copied().unwrap_or(0);
            if value == 0 {
                continue;
            }
            let h = (value as f64 * scale).max(1.0);
            top -= h;
            rects.push((
                s.class,
                s.label,
                i as f64 * step,
                top,
                (step - 1.0).max(1.0),
                h,
                value,
            ));
        }
    }
    let sum: u64 = totals.iter().sum();
    let summary = format!("{title}: {sum} in the last hour, at most {max} a minute");
    html! {
        svg.chart width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) }
            role="img" aria-label=(summary) {
            title { (summary) }
            line x1="0" y1=(HEIGHT - 1) x2=(WIDTH) y2=(HEIGHT - 1) {}
            @for (class, label, x, y, w, h, value) in &rects {
                rect class=(class) x=(format!("{x:.1}")) y=(format!("{y:.1}"))
                    width=(format!("{w:.1}")) height=(format!("{h:.1}")) {
                    title { (label) ": " (value) }
                }
            }
        }
        div.legend { span { "peak " (max) "/min" } }
    }
}

/// The colours of a chart's series, once per table.
pub fn legend(series: &[(&str, &str)]) -> Markup {
    html! {
        div.legend {
            span { "Last hour, per minute:" }
            @for (class, label) in series { span { i class=(class) {} (label) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_minute() {
        let svg = bars(
            "requests",
            &[
                Series {
                    class: "a",
                    label: "accepted",
                    values: vec![0, 2, 4],
                },
                Series {
                    class: "r",
                    label: "rejected",
                    values: vec![0, 0, 4],
                },
            ],
        )
        .into_string();
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("requests: 10 in the last hour, at most 8 a minute"));
        let empty = bars(
            "none",
            &[Series {
                class: "a",
                label: "x",
                values: vec![0; 60],
            }],
        );
        assert!(!empty.into_string().contains("<rect"));
    }
}
