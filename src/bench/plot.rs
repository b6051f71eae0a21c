//! Plots of a summary: accuracy (with 95 % bars, pass@N dashed) and tokens per item against
//! the ensemble size, and accuracy against tokens per item (what each strategy pays for its
//! accuracy), on log2 axes, one colour per series, as SVG and PNG.
//!
//! Text needs a font. plotters' `ab_glyph` backend reads one font file, found here at run
//! time (`CONCLAVE_FONT`, else a few usual system paths, else the first .ttf under
//! /usr/share/fonts), so no system font library is linked. Without one the plots are still
//! drawn, without text.
use super::report::Summary;
use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (900, 600);

/// Fonts tried first, in order: DejaVu and Liberation ship with most Linux images.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Accuracy,
    Cost,
    /// Accuracy against completion tokens per item.
    Tokens,
}

/// Writes accuracy_vs_n, cost_vs_n and accuracy_vs_tokens as .svg and .png into `dir`.
/// Returns whether the plots have text (a font was found).
pub fn draw(summary: &Summary, dir: &Path) -> Result<bool> {
    let text = font_registered();
    let plots = [
        (Kind::Accuracy, "accuracy_vs_n"),
        (Kind::Cost, "cost_vs_n"),
        (Kind::Tokens, "accuracy_vs_tokens"),
    ];
    for (kind, stem) in plots {
        let svg = dir.join(format!("{stem}.svg"));
        plot(
            SVGBackend::new(&svg, SIZE).into_drawing_area(),
            summary,
            kind,
            text,
        )?;
        let png = dir.join(format!("{stem}.png"));
        plot(
            BitMapBackend::new(&png, SIZE).into_drawing_area(),
            summary,
            kind,
            text,
        )?;
    }
    Ok(text)
}

/// Registers the first readable font once per process.
fn font_registered() -> bool {
    static DONE: OnceLock<bool> = OnceLock::new();
    *DONE.get_or_init(|| {
        let Some(bytes) = find_font().and_then(|p| std::fs::read(p).ok()) else {
            return false;
        };
        // plotters keeps fonts for the whole process and needs them 'static.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
    })
}

fn find_font() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONCLAVE_FONT") {
        return Some(PathBuf::from(p)); // what the user names, or nothing
    }
    if let Some(p) = FONTS.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(p);
    }
    first_ttf(Path::new("/usr/share/fonts"), 4)
}

fn first_ttf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let ttf = |p: &PathBuf| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf"));
    if let Some(p) = entries.iter().find(|p| p.is_file() && ttf(p)) {
        return Some(p.clone());
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| first_ttf(p, depth - 1))
}

fn plot<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    s: &Summary,
    kind: Kind,
    text: bool,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    // Both x axes are log2: of N, or of tokens per item.
    let x = |r: &super::accuracy::Row| match kind {
        Kind::Tokens => r.tokens_per_item.max(1.0).log2(),
        Kind::Accuracy | Kind::Cost => (r.n as f64).log2(),
    };
    let xs: Vec<f64> = s
        .series
        .iter()
        .flat_map(|x_| x_.rows.iter().map(x))
        .collect();
    let least = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let lo = match kind {
        Kind::Tokens => least.floor().min(least - 0.25),
        Kind::Accuracy | Kind::Cost => least.min(0.0),
    };
    let hi = xs.iter().copied().fold(0.0, f64::max).max(lo + 1.0);
    let top = match kind {
        Kind::Accuracy | Kind::Tokens => 1.0,
        Kind::Cost => {
            let most = s.series.iter().flat_map(|x| &x.rows);
            most.map(|r| r.tokens_per_item).fold(1.0, f64::max) * 1.1
        }
    };
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        let title = match kind {
            Kind::Accuracy => format!("{}: accuracy vs ensemble size", s.task),
            Kind::Cost => format!("{}: completion tokens per item vs ensemble size", s.task),
            Kind::Tokens => format!("{}: accuracy vs completion tokens per item", s.task),
        };
        builder
            .caption(title, (FAMILY, 22))
            .x_label_area_size(45)
            .y_label_area_size(65);
    }
    let mut chart = builder.build_cartesian_2d(lo - 0.25..hi + 0.25, 0.0..top)?;
    // The axis is log2(N): label whole powers of two only.
    let power = |x: &f64| {
        let r = x.round();
        if (x - r).abs() < 1e-6 && r >= 0.0 {
            format!("{}", 2f64.powf(r))
        } else {
            String::new()
        }
    };
    let whole = |y: &f64| format!("{y:.0}");
    let mut mesh = chart.configure_mesh();
    if kind == Kind::Cost {
        mesh.y_label_formatter(&whole);
    }
    if text {
        let (x_desc, y) = match kind {
            Kind::Accuracy => (
                "N (ensemble size, log2 scale)",
                "accuracy (bars: 95% interval; dashed: pass@N)",
            ),
            Kind::Cost => (
                "N (ensemble size, log2 scale)",
                "completion tokens per item",
            ),
            Kind::Tokens => (
                "completion tokens per item (log2 scale)",
                "accuracy (bars: 95% interval)",
            ),
        };
        mesh.x_desc(x_desc)
            .y_desc(y)
            .x_labels((hi - lo) as usize + 2)
            .x_label_formatter(&power)
            .label_style((FAMILY, 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;

    for (i, series) in s.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let value = |r: &super::accuracy::Row| match kind {
            Kind::Accuracy | Kind::Tokens => r.accuracy,
            Kind::Cost => r.tokens_per_item,
        };
        let points: Vec<(f64, f64)> = series.rows.iter().map(|r| (x(r), value(r))).collect();
        let line = chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        if text {
            line.label(series.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        if kind == Kind::Cost {
            continue;
        }
        let cap = 0.04;
        let bars = series.rows.iter().filter_map(|r| {
            let ci = r.ci95?;
            let (x, a, b) = (x(r), (r.accuracy - ci).max(0.0), (r.accuracy + ci).min(1.0));
            Some([
                vec![(x, a), (x, b)],
                vec![(x - cap, a), (x + cap, a)],
                vec![(x - cap, b), (x + cap, b)],
            ])
        });
        chart.draw_series(
            bars.flatten()
                .map(|p| PathElement::new(p, color.stroke_width(1))),
        )?;
        if kind == Kind::Tokens {
            continue;
        }
        let oracle: Vec<(f64, f64)> = series.rows.iter().map(|r| (x(r), r.oracle)).collect();
        let dashed =
            chart.draw_series(DashedLineSeries::new(oracle, 6, 4, color.stroke_width(1)))?;
        if text {
            dashed
                .label(format!("{} pass@N", series.name))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(1))
                });
        }
    }
    if text {
        chart
            .configure_series_labels()
            // Accuracy rises with tokens: against them the upper left is the emptiest.
            .position(match kind {
                Kind::Tokens => SeriesLabelPosition::UpperLeft,
                Kind::Accuracy | Kind::Cost => SeriesLabelPosition::LowerRight,
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FAMILY, 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::accuracy::Row;
    use super::super::report::SeriesSummary;
    use super::*;

    fn summary() -> Summary {
        let row = |n: usize, accuracy: f64| Row {
            n,
            accuracy,
            ci95: Some(0.1),
            oracle: (accuracy + 0.2).min(1.0),
            tokens_per_item: 50.0 * n as f64,
            seconds_per_item: None,
            steps_per_item: None,
        };
        Summary {
            task: "gsm8k".into(),
            dataset: "d.jsonl".into(),
            items: 3,
            trials: 10,
            seed: 0,
            interval: "x".into(),
            series: vec![SeriesSummary {
                name: "m".into(),
                strategy: "vote".into(),
                method: "sub-sampled".into(),
                samples: 4,
                items: 3,
                completion_tokens: 600,
                wall_seconds: 3.0,
                tokens_per_s: 200.0,
                rows: vec![row(1, 0.3), row(2, 0.4), row(4, 0.5)],
            }],
        }
    }

    #[test]
    fn plots_are_written_with_and_without_text() {
        let dir = tempfile::tempdir().unwrap();
        let s = summary();
        // No text: the path taken when no font is found; it must not need one.
        for kind in [Kind::Accuracy, Kind::Cost, Kind::Tokens] {
            let png = dir.path().join("bare.png");
            plot(
                BitMapBackend::new(&png, SIZE).into_drawing_area(),
                &s,
                kind,
                false,
            )
            .unwrap();
            assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
            let svg = dir.path().join("bare.svg");
            plot(
                SVGBackend::new(&svg, SIZE).into_drawing_area(),
                &s,
                kind,
                false,
            )
            .unwrap();
            assert!(!std::fs::read_to_string(&svg).unwrap().contains("<text"));
        }
        let text = draw(&s, dir.path()).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("accuracy_vs_n.svg")).unwrap();
        assert!(svg.contains("stroke-dasharray") || svg.matches("<line").count() > 10);
        if text {
            assert!(svg.contains("pass@N") && svg.contains(">\n4\n<"), "{svg}");
        }
        let svg = std::fs::read_to_string(dir.path().join("accuracy_vs_tokens.svg")).unwrap();
        if text {
            // Tokens per item run 50 to 200: the axis is labelled 64 and 128 among others.
            assert!(
                svg.contains(">\n64\n<") && svg.contains(">\n128\n<"),
                "{svg}"
            );
            assert!(!svg.contains("pass@N"));
        }
        for f in [
            "accuracy_vs_n.png",
            "cost_vs_n.png",
            "cost_vs_n.svg",
            "accuracy_vs_tokens.png",
        ] {
            assert!(dir.path().join(f).metadata().unwrap().len() > 500, "{f}");
        }
    }
}
