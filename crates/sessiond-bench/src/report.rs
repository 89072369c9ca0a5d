//! The results: an aligned text table, and optionally JSON.

use std::{io::Write, path::Path};

use serde::Serialize;

use crate::runner::Outcome;

/// One line of the results.
#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub mode: String,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Calls per second.
    pub throughput: f64,
    /// The Health/Check throughput this row is compared with: measured in slices paired with
    /// this row's (closed loop), else in the run's own baseline.
    pub noop_throughput: Option<f64>,
    /// `throughput` over `noop_throughput`.
    pub ratio_to_noop: Option<f64>,
    /// Latency percentiles, in microseconds.
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub first_error: Option<String>,
    /// Set when the scenario could not run; the numbers are then zero.
    pub failed: Option<String>,
}

impl Row {
    pub fn new(name: &str, mode: String, outcome: &Outcome, noop: Option<f64>) -> Self {
        let throughput = outcome.throughput();
        let (requests, errors, first_error, [p50, p90, p99, p999, max]) = match outcome.total() {
            Ok(total) => (
                total.ok + total.errors,
                total.errors,
                total.first_error.clone(),
                [
                    total.latency.value_at_quantile(0.50),
                    total.latency.value_at_quantile(0.90),
                    total.latency.value_at_quantile(0.99),
                    total.latency.value_at_quantile(0.999),
                    total.latency.max(),
                ],
            ),
            Err(error) => (0, 0, Some(format!("{error:#}")), [0; 5]),
        };
        Self {
            name: name.to_owned(),
            mode,
            requests,
            errors,
            seconds: outcome.elapsed.as_secs_f64(),
            throughput,
            noop_throughput: noop,
            ratio_to_noop: noop
                .filter(|noop| *noop > 0.0)
                .map(|noop| throughput / noop),
            p50_us: p50,
            p90_us: p90,
            p99_us: p99,
            p999_us: p999,
            max_us: max,
            first_error,
            failed: None,
        }
    }

    pub fn failed(name: &str, error: &str) -> Self {
        Self {
            name: name.to_owned(),
            mode: "FAILED".into(),
            requests: 0,
            errors: 0,
            seconds: 0.0,
            throughput: 0.0,
            noop_throughput: None,
            ratio_to_noop: None,
            p50_us: 0,
            p90_us: 0,
            p99_us: 0,
            p999_us: 0,
            max_us: 0,
            first_error: None,
            failed: Some(error.to_owned()),
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Prints the rows as an aligned table, then the first error of each row that had any.
pub fn print_table(rows: &[Row]) {
    let header = [
        "scenario",
        "mode",
        "requests",
        "errors",
        "secs",
        "req/s",
        "noop req/s",
        "x noop",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            if row.failed.is_some() {
                let mut cells = vec![row.name.clone(), row.mode.clone()];
                cells.resize(header.len(), "-".into());
                return cells;
            }
            vec![
                row.name.clone(),
                row.mode.clone(),
                row.requests.to_string(),
                row.errors.to_string(),
                format!("{:.2}", row.seconds),
                format!("{:.0}", row.throughput),
                row.noop_throughput
                    .map_or_else(|| "-".into(), |noop| format!("{noop:.0}")),
                row.ratio_to_noop
                    .map_or_else(|| "-".into(), |r| format!("{r:.3}")),
                ms(row.p50_us),
                ms(row.p90_us),
                ms(row.p99_us),
                ms(row.p999_us),
                ms(row.max_us),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            cells
                .iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .chain(header.get(column).map(|h| h.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let text: Vec<String> = cells
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, &width))| {
                if column < 2 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for row in &cells {
        line(&mut row.iter().map(String::as_str));
    }
    for row in rows {
        if let Some(error) = &row.failed {
            println!("{}: FAILED: {error}", row.name.trim());
        } else if let Some(error) = &row.first_error {
            println!("{}: first error: {error}", row.name.trim());
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    command: &'a str,
    addr: &'a str,
    concurrency: usize,
    connections: usize,
    noop_throughput: Option<f64>,
    results: &'a [Row],
}

/// Writes the rows as JSON to `path` ("-": standard output).
pub fn write_json(
    path: &Path,
    command: &str,
    addr: &str,
    concurrency: usize,
    connections: usize,
    noop: Option<f64>,
    rows: &[Row],
) -> anyhow::Result<()> {
    let report = Report {
        command,
        addr,
        concurrency,
        connections,
        noop_throughput: noop,
        results: rows,
    };
    let text = serde_json::to_string_pretty(&report)?;
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
    } else {
        std::fs::write(path, text + "\n")?;
    }
    Ok(())
}
