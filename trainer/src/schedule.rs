//! Learning-rate schedules.

/// Linear warmup over `warmup` steps to `peak`, then cosine decay to `peak · min_fraction`
/// at `total` steps. `step` counts from 0.
pub fn warmup_cosine(
    step: usize,
    total: usize,
    warmup: usize,
    peak: f64,
    min_fraction: f64,
) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = (total - warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    let min = peak * min_fraction;
    min + 0.5 * (peak - min) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::warmup_cosine;

    #[test]
    fn warms_up_linearly_then_decays_to_the_floor() {
        let lr = |s| warmup_cosine(s, 600, 30, 2e-3, 0.1);
        assert!((lr(0) - 2e-3 / 30.0).abs() < 1e-12);
        assert!((lr(29) - 2e-3).abs() < 1e-12);
        assert!((lr(30) - 2e-3).abs() < 1e-12);
        assert!((lr(315) - 1.1e-3).abs() < 1e-9);
        assert!((lr(600) - 2e-4).abs() < 1e-12);
        assert!((1..600).all(|s| lr(s) <= lr(s - 1) + 1e-12 || s < 30));
    }
}
