//! A run's output directory: `metrics.jsonl`, `summary.json`, `loss.svg`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use sinter_trainer::simulate::EvalPoint;

use crate::cli::XAxis;

/// Writes metrics (one JSON object per evaluation), the summary and the loss curve.
pub fn write_run<S: serde::Serialize>(
    dir: &Path,
    evals: &[EvalPoint],
    summary: &S,
    title: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut metrics = Vec::new();
    for point in evals {
        serde_json::to_writer(&mut metrics, point)?;
        metrics.push(b'\n');
    }
    write_synced(&dir.join("metrics.jsonl"), &metrics)?;
    write_synced(
        &dir.join("summary.json"),
        &serde_json::to_vec_pretty(summary)?,
    )?;
    plot_curves(
        &dir.join("loss.svg"),
        title,
        &[(title.to_owned(), evals.to_vec())],
        XAxis::Tokens,
    )
}

/// Reads the evaluations a run wrote to `dir/metrics.jsonl`.
pub fn read_metrics(dir: &Path) -> Result<Vec<EvalPoint>> {
    let path = dir.join("metrics.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a metrics record", path.display(), i + 1))
        })
        .collect()
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Validation loss against training tokens (millions) or steps per worker, one line per
/// labelled series.
pub fn plot_curves(
    path: &Path,
    title: &str,
    series: &[(String, Vec<EvalPoint>)],
    x: XAxis,
) -> Result<()> {
    let (x_of, x_desc): (fn(&EvalPoint) -> f64, &str) = match x {
        XAxis::Tokens => (
            |p| p.tokens as f64 / 1e6,
            "training tokens (millions, all workers)",
        ),
        XAxis::Steps => (|p| p.step as f64, "inner steps per worker"),
    };
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let max_x = points.clone().map(x_of).fold(0.0, f64::max).max(1e-9);
    let (lo, hi) = points.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.val_loss), hi.max(p.val_loss))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo as f64 * 0.95, hi as f64 * 1.02)
    } else {
        (0.0, 1.0)
    };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("validation loss (nats/token)")
        .draw()?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (x_of(p), p.val_loss as f64)),
                color.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Prints a metagraph's neurons, one row each.
pub fn print_neurons(neurons: &[sinter_mechanism::ledger::interface::NeuronInfo]) {
    println!(
        "{:>4} {:<50} {:>16} {:>9} {:>9} {:>9} {:>9} {:>16}",
        "uid", "hotkey", "stake", "consensus", "incentive", "dividends", "vtrust", "emission"
    );
    for n in neurons {
        println!(
            "{:>4} {:<50} {:>16} {:>9.5} {:>9.5} {:>9.5} {:>9.5} {:>16}",
            n.uid,
            n.hotkey.ss58(),
            n.stake,
            n.consensus,
            n.incentive,
            n.dividends,
            n.validator_trust,
            n.emission
        );
    }
}
