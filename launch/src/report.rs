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
    let (lo, hi) = padded_range(points.map(|p| f64::from(p.val_loss)), 0.95, 1.02);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = titled(&root, title).build_cartesian_2d(0.0..max_x, lo..hi)?;
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
    legend_and_save(&mut chart, &root, path)
}

/// From the smallest to the largest of `values`, scaled by `below` and `above`.
fn padded_range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if lo.is_finite() {
        (lo * below, hi * above)
    } else {
        (0.0, 1.0)
    }
}

/// A chart builder on `root` with the title and margins every picture here uses.
fn titled<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60);
    builder
}

/// Draws the chart's legend and writes the picture.
fn legend_and_save<'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    root: &DrawingArea<SVGBackend<'a>, plotters::coord::Shift>,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// One run on the loss/bytes frontier, from its `summary.json`.
#[derive(Debug, Clone)]
pub struct FrontierPoint {
    /// The run directory's name.
    pub label: String,
    /// Bytes each worker sent.
    pub bytes: f64,
    /// Final validation loss.
    pub loss: f64,
    /// A baseline drawn as a line: data-parallel, or a run that sent nothing.
    pub reference: bool,
}

/// Reads the frontier point of a run: its directory (holding `summary.json`, labelled with the
/// directory's name) or a summary file itself (labelled with its name less `.json`). A
/// summary's own `label` field, where it has one, wins: a kept summary names its setting.
pub fn read_frontier_point(run: &Path) -> Result<FrontierPoint> {
    let path = if run.is_dir() {
        run.join("summary.json")
    } else {
        run.to_path_buf()
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let number = |field: &str| {
        summary[field]
            .as_f64()
            .with_context(|| format!("{}: no number `{field}`", path.display()))
    };
    let bytes = number("bytes_sent_per_worker")?;
    let named = if run.is_dir() {
        run.file_name()
    } else {
        run.file_stem()
    };
    let label = match summary["label"].as_str() {
        Some(label) => label.to_owned(),
        None => named
            .unwrap_or(run.as_os_str())
            .to_string_lossy()
            .into_owned(),
    };
    Ok(FrontierPoint {
        label,
        bytes,
        loss: number("final_val_loss")?,
        reference: summary["mode"] == "ddp" || bytes == 0.0,
    })
}

/// Final loss against bytes sent per worker (log scale): a labelled point per run, a
/// labelled horizontal line per reference run.
pub fn plot_frontier(path: &Path, title: &str, runs: &[FrontierPoint]) -> Result<()> {
    let sent = runs.iter().filter(|r| r.bytes > 0.0).map(|r| r.bytes);
    let (min_x, max_x) = sent.fold((f64::INFINITY, 0.0f64), |(lo, hi), b| {
        (lo.min(b), hi.max(b))
    });
    let (min_x, max_x) = if min_x.is_finite() {
        (min_x / 2.0, max_x * 2.0)
    } else {
        (1e6, 1e9)
    };
    let (lo, hi) = padded_range(runs.iter().map(|r| r.loss), 0.99, 1.01);
    // Taller with more points, so that their labels find room near them.
    let height = (360 + 16 * runs.len() as u32).clamp(560, 1400);
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = titled(&root, title).build_cartesian_2d((min_x..max_x).log_scale(), lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("bytes sent per worker (log scale)")
        .y_desc("final validation loss (nats/token)")
        .x_label_formatter(&|b| human_bytes(*b))
        .draw()?;
    for (i, run) in runs.iter().filter(|r| r.reference).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                [(min_x, run.loss), (max_x, run.loss)],
                color.stroke_width(1),
            ))?
            .label(format!("{} ({:.3})", run.label, run.loss))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(1))
            });
    }
    let points: Vec<(&FrontierPoint, String)> = runs
        .iter()
        .filter(|r| !r.reference)
        .map(|r| (r, format!("{} {:.3}", r.label, r.loss)))
        .collect();
    let pixels: Vec<(i32, i32)> = points
        .iter()
        .map(|(r, _)| chart.backend_coord(&(r.bytes, r.loss)))
        .collect();
    // About the width of a 12-pixel sans-serif character.
    let widths: Vec<i32> = points
        .iter()
        .map(|(_, text)| text.chars().count() as i32 * 13 / 2)
        .collect();
    let offsets = label_offsets(&pixels, &widths, LABEL_HEIGHT);
    // A label moved off its usual place gets a thin line back to its point.
    let leader = |(dx, dy): (i32, i32)| {
        let moved = dy != -LABEL_HEIGHT - 1;
        PathElement::new(
            if moved {
                vec![(0, 0), (dx, dy + LABEL_HEIGHT / 2)]
            } else {
                vec![]
            },
            BLUE.mix(0.4).stroke_width(1),
        )
    };
    chart.draw_series(points.iter().zip(offsets).map(|((r, text), offset)| {
        EmptyElement::at((r.bytes, r.loss))
            + Circle::new((0, 0), 4, BLUE.filled())
            + leader(offset)
            + Text::new(text.clone(), offset, ("sans-serif", 12))
    }))?;
    legend_and_save(&mut chart, &root, path)
}

/// A point label's height in pixels.
const LABEL_HEIGHT: i32 = 13;

/// Where each point's label goes, as an offset from its point (pixels, y down): beside it,
/// moved up or down past the labels placed before it so that no two overlap, where five
/// dozen tries find room (the last try otherwise). Labels are placed from the top point down,
/// so that a crowd of points stacks its labels in the points' order.
fn label_offsets(points: &[(i32, i32)], widths: &[i32], height: i32) -> Vec<(i32, i32)> {
    let mut placed: Vec<[i32; 4]> = Vec::new();
    let overlaps =
        |a: &[i32; 4], b: &[i32; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by_key(|&i| (points[i].1, points[i].0));
    let mut offsets = vec![(6, -height - 1); points.len()];
    for i in order {
        let ((x, y), w) = (points[i], widths[i]);
        let boxed = |dy: i32| [x + 6, y + dy, x + 6 + w, y + dy + height];
        let tries = (0..60).map(|i: i32| {
            let step = (i + 1) / 2 * (height + 1);
            if i % 2 == 0 {
                -height - 1 - step
            } else {
                4 + step - height - 1
            }
        });
        let mut chosen = -height - 1;
        for dy in tries {
            chosen = dy;
            if !placed.iter().any(|p| overlaps(p, &boxed(dy))) {
                break;
            }
        }
        placed.push(boxed(chosen));
        offsets[i] = (6, chosen);
    }
    offsets
}

/// `1.5 MB`, `3.1 GB`: a byte count for an axis label.
pub fn human_bytes(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.0} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frontier_point_comes_from_a_run_directory_or_a_kept_summary() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("h2-top64");
        std::fs::create_dir(&run).unwrap();
        let summary =
            r#"{"final_val_loss": 1.61, "bytes_sent_per_worker": 19930000, "mode": "diloco"}"#;
        std::fs::write(run.join("summary.json"), summary).unwrap();
        let point = read_frontier_point(&run).unwrap();
        assert_eq!(
            (point.label.as_str(), point.loss, point.bytes),
            ("h2-top64", 1.61, 19.93e6)
        );
        assert!(!point.reference);

        let kept = dir.path().join("ddp.json");
        std::fs::write(
            &kept,
            r#"{"final_val_loss": 1.556, "bytes_sent_per_worker": 3086000000, "mode": "ddp"}"#,
        )
        .unwrap();
        let point = read_frontier_point(&kept).unwrap();
        assert_eq!(point.label, "ddp");
        assert!(point.reference, "data-parallel is a reference line");

        let labelled = dir.path().join("x.json");
        std::fs::write(
            &labelled,
            r#"{"label": "one worker", "final_val_loss": 1.745, "bytes_sent_per_worker": 0}"#,
        )
        .unwrap();
        let point = read_frontier_point(&labelled).unwrap();
        assert_eq!(point.label, "one worker");
        assert!(
            point.reference,
            "a run that sent nothing is a reference line"
        );

        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, r#"{"final_val_loss": 1.7}"#).unwrap();
        let error = format!("{:#}", read_frontier_point(&broken).unwrap_err());
        assert!(error.contains("bytes_sent_per_worker"), "{error}");
    }

    #[test]
    fn labels_of_nearby_points_do_not_overlap() {
        let points = [(100, 200), (110, 200), (105, 203), (400, 200), (100, 300)];
        let widths = [120, 120, 120, 120, 120];
        let offsets = label_offsets(&points, &widths, LABEL_HEIGHT);
        let boxes: Vec<[i32; 4]> = points
            .iter()
            .zip(&offsets)
            .zip(widths)
            .map(|((p, o), w)| {
                let (x, y) = (p.0 + o.0, p.1 + o.1);
                [x, y, x + w, y + LABEL_HEIGHT]
            })
            .collect();
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                let apart = a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1];
                assert!(apart, "{a:?} and {b:?} overlap");
            }
        }
        // A point with room keeps the usual place, just above and right of it.
        assert_eq!(offsets[0], (6, -LABEL_HEIGHT - 1));
        assert_eq!(offsets[3], (6, -LABEL_HEIGHT - 1));
    }
}
