//! Renders a [`Report`] into a results folder: the markdown tables (`results.md`, also the
//! source of the BENCHMARKS.md excerpts), the raw figures (`results.json`) and three SVG plots.
//! It only formats what the runner measured; a figure the runner could not get (None) shows as
//! "—" in the tables and is left out of the plots, so a partial run still renders whole.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::model::{Cell, Profile, Report, TCP_IPV4_HEADERS};

/// What the tables show for a figure that is missing or does not apply.
const MISSING: &str = "—";

/// Plot size in pixels.
const PLOT_SIZE: (u32, u32) = (900, 540);

/// Series colours (the tab10 palette without its grey, which marks the ceiling C).
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

const CEILING_GREY: RGBColor = RGBColor(128, 128, 128);

/// Width of the legend strip right of each plot, pixels.
const LEGEND_WIDTH: u32 = 170;

/// Writes results.md, results.json, goodput_vs_loss.svg, p99_vs_loss.svg, goodput_share.svg
/// into `dir` (created if missing).
pub fn write(dir: &Path, report: &Report) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("results.md"), markdown(report))?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(dir.join("results.json"), json + "\n")?;
    fs::write(
        dir.join("goodput_vs_loss.svg"),
        goodput_vs_loss_svg(report)?,
    )?;
    fs::write(dir.join("p99_vs_loss.svg"), p99_vs_loss_svg(report)?)?;
    fs::write(dir.join("goodput_share.svg"), goodput_share_svg(report)?)?;
    Ok(())
}

/// The markdown document (also used for BENCHMARKS.md excerpts).
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    // Writing into a String cannot fail; the results are ignored for that reason only.
    let _ = write_markdown(&mut md, report);
    md
}

fn write_markdown(md: &mut String, report: &Report) -> std::fmt::Result {
    writeln!(md, "# Loss-emulation comparison")?;
    writeln!(md)?;
    writeln!(md, "* Date: {}", one_line(&report.date))?;
    writeln!(md, "* Machine: {}", one_line(&report.machine))?;
    writeln!(md, "* Command: {}", code_span(&report.command))?;
    writeln!(
        md,
        "* Default TCP congestion control: {}",
        one_line(&report.default_cc)
    )?;
    writeln!(
        md,
        "* Bulk: {} run(s) per cell of {} s after a {} s warm-up, the median quoted; \
         request/response: {} round trips per cell{}",
        report.bulk_runs.max(1),
        report.bulk_seconds,
        report.warmup_seconds,
        report.rr_count,
        if report.quick { " (quick run)" } else { "" }
    )?;
    if report.elapsed_seconds.is_finite() && report.elapsed_seconds > 0.0 {
        writeln!(md, "* Run time: {:.0} s", report.elapsed_seconds)?;
    }
    writeln!(md)?;

    writeln!(md, "## How to read")?;
    writeln!(md)?;
    writeln!(
        md,
        "goodput is the receiver's goodput of one iperf3 TCP stream after the warm-up. \
         C is the profile's ceiling: the link rate x (1 - loss) x the payload share of a \
         full-size TCP/IPv4 packet; x C is goodput / C. rr p50 / p99 are the median and 99th \
         percentile of 64-byte request/response round trips; unanswered counts requests without \
         an answer by the end of the run. wire/delivered is the IP bytes on the link, both \
         directions, per payload byte delivered. CPU is the tunnel processes' CPU seconds (user + \
         system, both nodes) per GB delivered; {MISSING} for plain TCP, which has no tunnel \
         process. late is the share of the emulator's releases more than 1 ms late (a starved \
         emulator shows here). {MISSING} marks a figure that could not be measured."
    )?;
    writeln!(md)?;

    write_summary(md, report)?;
    write_goals(md, report)?;

    for profile in &report.profiles {
        write_profile_table(md, report, profile)?;
    }

    writeln!(md, "## Tunnels")?;
    writeln!(md)?;
    for t in &report.tunnels {
        writeln!(
            md,
            "* **{}**: {}",
            one_line(&t.name),
            one_line(&t.description)
        )?;
    }
    Ok(())
}

/// One of issue 7's goals for the engine, checked against the same run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Goal {
    pub tunnel: String,
    /// What is asked, for a human.
    pub text: String,
    /// The engine's figure and what it is held to, in the goal's unit.
    pub figure: Option<f64>,
    pub bound: Option<f64>,
    /// Figure at least (true) or at most (false) the bound.
    pub at_least: bool,
}

impl Goal {
    /// None when a figure is missing.
    pub fn met(&self) -> Option<bool> {
        let (f, b) = (self.figure?, self.bound?);
        Some(if self.at_least { f >= b } else { f <= b })
    }
}

/// The goals of issue 7 for each engine tunnel in the report (`coretun*`): at 50 ms RTT,
/// 100 Mbit/s, 5% loss at least 0.95 C, at least TCP-BBR's goodput, at least 1.7x kcptun's and
/// a request/response p99 of at most 70 ms; at 100 ms RTT, 50 Mbit/s, 10% loss at least 0.92 C
/// and at least 1.1x TCP-BBR's; on the clean profile at least 0.97x plain TCP's.
pub fn goals(report: &Report) -> Vec<Goal> {
    let goodput = |profile: &str, tunnel: &str| {
        report
            .cell(profile, tunnel)
            .and_then(|c| finite(c.goodput_bps))
            .map(|g| g / 1e6)
    };
    let ceiling = |profile: &str| {
        report
            .profiles
            .iter()
            .find(|p| p.name == profile)
            .and_then(ceiling_bps)
            .map(|c| c / 1e6)
    };
    let times = |v: Option<f64>, k: f64| v.map(|v| v * k);
    let mut out = Vec::new();
    for t in report
        .tunnels
        .iter()
        .filter(|t| t.name.starts_with("coretun"))
    {
        let me = |profile: &str| goodput(profile, &t.name);
        let goal = |text: &str, figure, bound, at_least| Goal {
            tunnel: t.name.clone(),
            text: text.to_owned(),
            figure,
            bound,
            at_least,
        };
        let p99 = report
            .cell("rtt50-5pct", &t.name)
            .and_then(|c| finite(c.rr_p99_us))
            .map(|us| us / 1000.0);
        out.extend([
            goal(
                "50 ms, 100 Mbit/s, 5%: goodput >= 0.95 C (Mbit/s)",
                me("rtt50-5pct"),
                times(ceiling("rtt50-5pct"), 0.95),
                true,
            ),
            goal(
                "50 ms, 100 Mbit/s, 5%: goodput >= tcp-bbr's (Mbit/s)",
                me("rtt50-5pct"),
                goodput("rtt50-5pct", "tcp-bbr"),
                true,
            ),
            goal(
                "50 ms, 100 Mbit/s, 5%: goodput >= 1.7x kcptun's (Mbit/s)",
                me("rtt50-5pct"),
                times(goodput("rtt50-5pct", "kcptun"), 1.7),
                true,
            ),
            goal(
                "50 ms, 100 Mbit/s, 5%: request/response p99 <= 70 ms (ms)",
                p99,
                Some(70.0),
                false,
            ),
            goal(
                "100 ms, 50 Mbit/s, 10%: goodput >= 0.92 C (Mbit/s)",
                me("rtt100-10pct"),
                times(ceiling("rtt100-10pct"), 0.92),
                true,
            ),
            goal(
                "100 ms, 50 Mbit/s, 10%: goodput >= 1.1x tcp-bbr's (Mbit/s)",
                me("rtt100-10pct"),
                times(goodput("rtt100-10pct", "tcp-bbr"), 1.1),
                true,
            ),
            goal(
                "clean: goodput >= 0.97x plain TCP's (Mbit/s)",
                me("clean"),
                times(goodput("clean", "tcp"), 0.97),
                true,
            ),
        ]);
    }
    out
}

fn write_goals(md: &mut String, report: &Report) -> std::fmt::Result {
    // Goals on profiles this run did not measure are left out.
    let goals: Vec<Goal> = goals(report)
        .into_iter()
        .filter(|g| g.figure.is_some())
        .collect();
    if goals.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Goals (issue 7), against this run's figures")?;
    writeln!(md)?;
    writeln!(md, "| tunnel | goal | figure | bound | met |")?;
    writeln!(md, "|---|---|---:|---:|---|")?;
    for g in &goals {
        let met = match g.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => MISSING,
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {met} |",
            table_text(&g.tunnel),
            table_text(&g.text),
            fmt_opt(g.figure, 1),
            fmt_opt(g.bound, 1)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// Profiles down, tunnels across: goodput and its share of C.
fn write_summary(md: &mut String, report: &Report) -> std::fmt::Result {
    writeln!(md, "## Summary: goodput Mbit/s (x C)")?;
    writeln!(md)?;
    write!(md, "| profile | C Mbit/s |")?;
    for t in &report.tunnels {
        write!(md, " {} |", table_text(&t.name))?;
    }
    writeln!(md)?;
    write!(md, "|---|---:|")?;
    for _ in &report.tunnels {
        write!(md, "---:|")?;
    }
    writeln!(md)?;
    for p in &report.profiles {
        let ceiling = ceiling_bps(p);
        write!(
            md,
            "| {} | {} |",
            table_text(&p.name),
            fmt_opt(ceiling.map(|c| c / 1e6), 1)
        )?;
        for t in &report.tunnels {
            let goodput = report
                .cell(&p.name, &t.name)
                .and_then(|c| finite(c.goodput_bps));
            let text = match (goodput, share(goodput, ceiling)) {
                (Some(g), Some(s)) => format!("{:.1} ({s:.2})", g / 1e6),
                (Some(g), None) => format!("{:.1}", g / 1e6),
                (None, _) => MISSING.to_owned(),
            };
            write!(md, " {text} |")?;
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    Ok(())
}

fn write_profile_table(md: &mut String, report: &Report, profile: &Profile) -> std::fmt::Result {
    let ceiling = ceiling_bps(profile);
    writeln!(
        md,
        "## {}: {}, C = {} Mbit/s",
        one_line(&profile.name),
        profile.describe(),
        fmt_opt(ceiling.map(|c| c / 1e6), 1)
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| tunnel | goodput Mbit/s | x C | runs Mbit/s | rr p50 ms | rr p99 ms | unanswered | wire/delivered | CPU s/GB | late % |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let mut errors = Vec::new();
    for t in &report.tunnels {
        let cell = report.cell(&profile.name, &t.name);
        let row = cell.map(|c| row_figures(c, ceiling));
        let row = row.unwrap_or_else(|| vec![MISSING.to_owned(); 9]);
        writeln!(md, "| {} | {} |", table_text(&t.name), row.join(" | "))?;
        if let Some(c) = cell {
            errors.extend(c.errors.iter().map(|e| (&c.tunnel, e)));
        }
    }
    // Errors of cells whose tunnel is not among the columns still belong to this profile.
    for c in report
        .cells
        .iter()
        .filter(|c| c.profile == profile.name && !report.tunnels.iter().any(|t| t.name == c.tunnel))
    {
        errors.extend(c.errors.iter().map(|e| (&c.tunnel, e)));
    }
    writeln!(md)?;
    if !errors.is_empty() {
        writeln!(md, "Errors:")?;
        writeln!(md)?;
        for (tunnel, e) in errors {
            writeln!(md, "* {}: {}", one_line(tunnel), one_line(e))?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// The table columns after the tunnel name.
fn row_figures(c: &Cell, ceiling: Option<f64>) -> Vec<String> {
    let goodput = finite(c.goodput_bps);
    vec![
        fmt_opt(goodput.map(|g| g / 1e6), 1),
        fmt_opt(share(goodput, ceiling), 2),
        runs(&c.goodput_runs_bps),
        fmt_ms(c.rr_p50_us),
        fmt_ms(c.rr_p99_us),
        c.rr_unanswered
            .map_or_else(|| MISSING.to_owned(), |n| n.to_string()),
        fmt_opt(c.wire_per_delivered, 3),
        fmt_opt(c.cpu_s_per_gb, 2),
        fmt_opt(Some(c.late_share * 100.0), 2),
    ]
}

/// Each bulk run's goodput, Mbit/s, in the order run (`—` when there is none).
fn runs(runs_bps: &[f64]) -> String {
    if runs_bps.is_empty() {
        return MISSING.to_owned();
    }
    runs_bps
        .iter()
        .map(|r| fmt_opt(Some(r / 1e6), 1))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// [`Profile::ceiling_bps`], or None where it means nothing (an MTU that does not hold the
/// headers, a zero rate, 100% loss).
fn ceiling_bps(p: &Profile) -> Option<f64> {
    if p.mtu <= TCP_IPV4_HEADERS {
        return None;
    }
    Some(p.ceiling_bps()).filter(|c| c.is_finite() && *c > 0.0)
}

fn share(goodput: Option<f64>, ceiling: Option<f64>) -> Option<f64> {
    Some(goodput? / ceiling?).filter(|s| s.is_finite())
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite())
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match finite(v) {
        Some(v) => format!("{v:.decimals$}"),
        None => MISSING.to_owned(),
    }
}

/// Microseconds as milliseconds with one decimal; below 1 ms two, so a loopback round trip
/// does not read as 0.0.
fn fmt_ms(us: Option<f64>) -> String {
    match finite(us).map(|us| us / 1000.0) {
        Some(ms) if ms.abs() < 1.0 => format!("{ms:.2}"),
        Some(ms) => format!("{ms:.1}"),
        None => MISSING.to_owned(),
    }
}

/// Text that stays on its line (runner errors may hold newlines).
fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .filter(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Text inside a table cell: also no column separators.
fn table_text(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

/// A markdown code span that survives backticks in the text.
fn code_span(s: &str) -> String {
    let s = one_line(s);
    if s.is_empty() {
        MISSING.to_owned()
    } else if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// One tunnel's points on a plot.
struct Series<'a> {
    name: &'a str,
    points: Vec<(f64, f64)>,
}

/// The profiles that differ only in independent loss: the largest group sharing RTT and rate
/// with no burst loss (the first such group in profile order on a tie), sorted by loss.
fn loss_group(report: &Report) -> Vec<&Profile> {
    let mut best: Vec<&Profile> = Vec::new();
    for p in report.profiles.iter().filter(|p| p.burst.is_none()) {
        let group: Vec<&Profile> = report
            .profiles
            .iter()
            .filter(|q| q.burst.is_none() && q.rtt_ms == p.rtt_ms && q.rate_bps == p.rate_bps)
            .collect();
        if group.len() > best.len() {
            best = group;
        }
    }
    best.sort_by(|a, b| a.loss.total_cmp(&b.loss));
    best
}

/// Per tunnel, (loss %, figure) over the loss group, skipping missing figures.
fn loss_series<'a>(
    report: &'a Report,
    group: &[&Profile],
    figure: impl Fn(&Cell) -> Option<f64>,
) -> Vec<Series<'a>> {
    report
        .tunnels
        .iter()
        .map(|t| Series {
            name: &t.name,
            points: group
                .iter()
                .filter_map(|p| {
                    let y = finite(figure(report.cell(&p.name, &t.name)?))?;
                    Some((p.loss * 100.0, y))
                })
                .collect(),
        })
        .collect()
}

/// The x range of a loss plot: from 0 (or below, for nonsense input) to the largest loss.
fn loss_range(group: &[&Profile]) -> Range<f64> {
    let losses = || {
        group
            .iter()
            .map(|p| p.loss * 100.0)
            .filter(|l| l.is_finite())
    };
    let lo = losses().fold(0.0, f64::min);
    let hi = losses().fold(lo, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.5);
    (lo - if lo < 0.0 { pad } else { 0.0 })..(hi + pad)
}

fn loss_title(what: &str, group: &[&Profile]) -> String {
    match group.first() {
        Some(p) if p.rtt_ms > 0 => format!(
            "{what} vs loss, {} ms RTT, {}",
            p.rtt_ms,
            mbit_label(p.rate_bps)
        ),
        Some(p) => format!("{what} vs loss, {}", mbit_label(p.rate_bps)),
        None => format!("{what} vs loss (no loss profiles in this report)"),
    }
}

fn mbit_label(rate_bps: u64) -> String {
    if rate_bps.is_multiple_of(1_000_000) {
        format!("{} Mbit/s", rate_bps / 1_000_000)
    } else {
        format!("{:.1} Mbit/s", rate_bps as f64 / 1e6)
    }
}

fn goodput_vs_loss_svg(report: &Report) -> io::Result<String> {
    let group = loss_group(report);
    let series = loss_series(report, &group, |c| c.goodput_bps.map(|g| g / 1e6));
    let ceiling: Vec<(f64, f64)> = group
        .iter()
        .filter_map(|p| Some((p.loss * 100.0, ceiling_bps(p)? / 1e6)))
        .collect();
    let top = series
        .iter()
        .flat_map(|s| s.points.iter())
        .chain(ceiling.iter())
        .map(|&(_, y)| y)
        .fold(1.0, f64::max);
    let ceiling_series = Series {
        name: "C (ceiling)",
        points: ceiling,
    };
    line_chart(
        &loss_title("Goodput", &group),
        loss_range(&group),
        0.0..top * 1.1,
        "goodput Mbit/s",
        &series,
        Some(&ceiling_series),
    )
}

fn p99_vs_loss_svg(report: &Report) -> io::Result<String> {
    let group = loss_group(report);
    let mut series = loss_series(report, &group, |c| c.rr_p99_us.map(|us| us / 1000.0));
    let ys = || series.iter().flat_map(|s| s.points.iter()).map(|&(_, y)| y);
    let lo = ys().filter(|&y| y > 0.0).fold(f64::INFINITY, f64::min);
    let hi = ys().fold(0.0, f64::max);
    let title = loss_title("Request/response p99", &group);
    let x = loss_range(&group);
    if lo.is_finite() && hi > 10.0 * lo {
        // A log axis cannot show zero or negative times.
        for s in &mut series {
            s.points.retain(|&(_, y)| y > 0.0);
        }
        let y = (lo / 1.5..hi * 1.5).log_scale();
        line_chart(&title, x, y, "rr p99 ms (log scale)", &series, None)
    } else {
        let top = if hi > 0.0 { hi * 1.1 } else { 1.0 };
        line_chart(&title, x, 0.0..top, "rr p99 ms", &series, None)
    }
}

/// A line chart with points, one series per tunnel, an optional dashed grey reference line and
/// a legend, as an SVG document. Generic over the y axis so p99 can be drawn on a log scale.
fn line_chart<Y>(
    title: &str,
    x: Range<f64>,
    y: Y,
    y_desc: &str,
    series: &[Series],
    reference: Option<&Series>,
) -> io::Result<String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("loss % (each way)")
            .y_desc(y_desc)
            .x_label_formatter(&|v| trimmed(*v))
            .y_label_formatter(&|v| axis_number(*v))
            .draw()
            .map_err(plot_err)?;

        let mut keys = Vec::new();
        if let Some(r) = reference {
            chart
                .draw_series(DashedLineSeries::new(
                    r.points.iter().copied(),
                    8,
                    6,
                    CEILING_GREY.stroke_width(2),
                ))
                .map_err(plot_err)?;
            // Marks too, so a single point (a dash of no length) still shows.
            chart
                .draw_series(
                    r.points
                        .iter()
                        .map(|&p| Cross::new(p, 4, CEILING_GREY.stroke_width(2))),
                )
                .map_err(plot_err)?;
            keys.push((r.name, Key::Dashed(CEILING_GREY)));
        }
        for (i, s) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?;
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
            keys.push((s.name, Key::Line(color)));
        }
        draw_legend(&legend, &keys)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Goodput / C for every profile and tunnel, as grouped bars.
fn goodput_share_svg(report: &Report) -> io::Result<String> {
    let n = report.profiles.len();
    let tunnels = report.tunnels.len().max(1);
    let bars: Vec<Vec<(usize, f64)>> = report
        .tunnels
        .iter()
        .map(|t| {
            report
                .profiles
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let c = report.cell(&p.name, &t.name)?;
                    Some((i, share(finite(c.goodput_bps), ceiling_bps(p))?))
                })
                .collect()
        })
        .collect();
    let top = bars
        .iter()
        .flatten()
        .map(|&(_, s)| s * 1.05)
        .fold(1.05, f64::max);
    let names: Vec<&str> = report.profiles.iter().map(|p| p.name.as_str()).collect();
    let label = |v: &f64| {
        let i = v.round();
        if i >= 0.0 && (v - i).abs() < 1e-6 {
            names
                .get(i as usize)
                .map_or_else(String::new, |s| s.to_string())
        } else {
            String::new()
        }
    };

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, PLOT_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (plot, legend) = root.split_horizontally(PLOT_SIZE.0 - LEGEND_WIDTH);
        let right = n.max(1) as f64 - 0.5;
        let x = CategoryAxis {
            inner: (-0.5..right).into(),
            count: n,
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption("Goodput as a share of the ceiling C", ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x, 0.0..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc("profile")
            .y_desc("goodput / C")
            .x_label_formatter(&label)
            .y_label_formatter(&|v| axis_number(*v))
            .draw()
            .map_err(plot_err)?;

        chart
            .draw_series(DashedLineSeries::new(
                [(-0.5, 1.0), (right, 1.0)],
                8,
                6,
                CEILING_GREY.stroke_width(2),
            ))
            .map_err(plot_err)?;
        let mut keys = vec![("C", Key::Dashed(CEILING_GREY))];

        // Each profile's slot is 0.8 wide, split between the tunnels in column order.
        let width = 0.8 / tunnels as f64;
        for (j, (t, bars)) in report.tunnels.iter().zip(&bars).enumerate() {
            let color = PALETTE[j % PALETTE.len()];
            chart
                .draw_series(bars.iter().map(|&(i, s)| {
                    let x0 = i as f64 - 0.4 + j as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.9, s)], color.filled())
                }))
                .map_err(plot_err)?;
            keys.push((t.name.as_str(), Key::Bar(color)));
        }
        draw_legend(&legend, &keys)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// How a legend entry shows its series.
enum Key {
    Line(RGBColor),
    Dashed(RGBColor),
    Bar(RGBColor),
}

/// The legend, in its own strip right of the plot so it never covers data.
fn draw_legend(area: &DrawingArea<SVGBackend, Shift>, keys: &[(&str, Key)]) -> io::Result<()> {
    let font =
        TextStyle::from(("sans-serif", 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (y, (name, key)) in (70..).step_by(24).zip(keys) {
        match *key {
            Key::Line(c) => area.draw(&PathElement::new(vec![(4, y), (30, y)], c.stroke_width(2))),
            Key::Dashed(c) => area
                .draw(&PathElement::new(vec![(4, y), (13, y)], c.stroke_width(2)))
                .and_then(|()| {
                    area.draw(&PathElement::new(vec![(20, y), (30, y)], c.stroke_width(2)))
                }),
            Key::Bar(c) => area.draw(&Rectangle::new([(8, y - 6), (26, y + 6)], c.filled())),
        }
        .map_err(plot_err)?;
        area.draw(&Text::new(name.to_string(), (38, y), font.clone()))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// An f64 axis whose ticks are exactly the category centres 0, 1, .., count - 1, so each
/// profile's name sits under its bars (plotters' own f64 axis picks "nice" ticks instead).
struct CategoryAxis {
    inner: RangedCoordf64,
    count: usize,
}

impl Ranged for CategoryAxis {
    // Labels come from the chart's formatter; this only makes the axis usable with a mesh.
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            (0..self.count).map(|i| i as f64).collect()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

/// A number without trailing zeros (loss percentages: 0, 0.5, 1, 5).
fn trimmed(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// Axis tick labels: few digits, more for small values.
fn axis_number(v: f64) -> String {
    let a = v.abs();
    if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn plot_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("plot: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lossbench::model::{TunnelInfo, standard_profiles};

    /// A unique scratch directory, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lossbench-report-{tag}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const FILES: [&str; 5] = [
        "results.md",
        "results.json",
        "goodput_vs_loss.svg",
        "p99_vs_loss.svg",
        "goodput_share.svg",
    ];

    /// Made-up figures: tcp falls with loss, kcptun holds, engine holds best; kcptun did not
    /// come up on rtt50-5pct.
    fn synthetic() -> Report {
        let profiles = standard_profiles();
        let tunnels = ["tcp", "kcptun", "engine"];
        let mut cells = Vec::new();
        for (i, p) in profiles.iter().enumerate() {
            for (j, t) in tunnels.iter().enumerate() {
                let mut c = Cell {
                    profile: p.name.clone(),
                    tunnel: t.to_string(),
                    late_share: 0.0001 * i as f64,
                    ..Cell::default()
                };
                if p.name == "rtt50-5pct" && *t == "kcptun" {
                    c.errors
                        .push("kcptun did not come up within 10 s".to_owned());
                    c.late_share = 0.0;
                } else {
                    let c_bps = p.ceiling_bps();
                    let share = match *t {
                        "tcp" => (1.0 - 10.0 * p.loss).max(0.05),
                        "kcptun" => 0.7,
                        _ => 0.9,
                    };
                    c.goodput_bps = Some(c_bps * share);
                    c.goodput_runs_bps = vec![c_bps * share];
                    let rtt_us = p.rtt_ms as f64 * 1000.0;
                    c.rr_p50_us = Some(rtt_us + 120.0 + j as f64 * 100.0);
                    // Plain TCP's tail grows tenfold at 5% loss (a log axis), the others less.
                    let tail = if *t == "tcp" { 400.0 } else { 40.0 };
                    c.rr_p99_us = Some(rtt_us * (1.0 + tail * p.loss) + 400.0 + j as f64);
                    c.rr_unanswered = Some(j as u64);
                    c.wire_per_delivered = Some(1.04 + 0.1 * j as f64 + p.loss);
                    c.cpu_s_per_gb = (*t != "tcp").then_some(1.5 * j as f64);
                }
                cells.push(c);
            }
        }
        Report {
            command: "scripts/lossbench.sh --quick".to_owned(),
            date: "2026-11-22 13:40 UTC".to_owned(),
            machine: "Test CPU, 2 cores, Linux 6.1".to_owned(),
            default_cc: "cubic".to_owned(),
            quick: true,
            bulk_runs: 1,
            bulk_seconds: 10,
            warmup_seconds: 2,
            rr_count: 200,
            profiles,
            tunnels: tunnels
                .iter()
                .map(|t| TunnelInfo {
                    name: t.to_string(),
                    description: format!("{t} across the emulated link"),
                })
                .collect(),
            cells,
            elapsed_seconds: 321.0,
        }
    }

    #[test]
    fn write_renders_every_file() {
        let report = synthetic();
        let dir = TempDir::new("full");
        write(&dir.0, &report).unwrap();
        for f in FILES {
            assert!(dir.0.join(f).is_file(), "{f} missing");
        }
        for f in FILES.iter().filter(|f| f.ends_with(".svg")) {
            let svg = fs::read_to_string(dir.0.join(f)).unwrap();
            assert!(
                svg.starts_with("<svg") || svg.starts_with("<?xml"),
                "{f}: {}",
                &svg[..svg.len().min(80)]
            );
            assert!(svg.trim_end().ends_with("</svg>"), "{f} not closed");
            for t in &report.tunnels {
                assert!(svg.contains(&t.name), "{f} has no legend entry {}", t.name);
            }
        }
        let goodput = fs::read_to_string(dir.0.join("goodput_vs_loss.svg")).unwrap();
        assert!(goodput.contains("50 ms RTT, 100 Mbit/s"), "title");
        assert!(goodput.contains("C (ceiling)"));
        let share = fs::read_to_string(dir.0.join("goodput_share.svg")).unwrap();
        for p in &report.profiles {
            assert!(
                share.contains(&p.name),
                "share plot has no label {}",
                p.name
            );
        }
        // p99 spans 50 .. 1050 ms: a log axis.
        let p99 = fs::read_to_string(dir.0.join("p99_vs_loss.svg")).unwrap();
        assert!(p99.contains("log scale"));

        let json = fs::read_to_string(dir.0.join("results.json")).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let md = fs::read_to_string(dir.0.join("results.md")).unwrap();
        assert_eq!(md, markdown(&report));
    }

    #[test]
    fn goals_are_checked_against_the_same_runs_figures() {
        let cell = |profile: &str, tunnel: &str, mbit: f64, p99_ms: f64| Cell {
            profile: profile.to_owned(),
            tunnel: tunnel.to_owned(),
            goodput_bps: Some(mbit * 1e6),
            rr_p99_us: Some(p99_ms * 1000.0),
            ..Cell::default()
        };
        let report = Report {
            profiles: standard_profiles(),
            tunnels: ["tcp", "tcp-bbr", "kcptun", "coretun"]
                .iter()
                .map(|t| TunnelInfo {
                    name: t.to_string(),
                    description: String::new(),
                })
                .collect(),
            cells: vec![
                // C = 91.7 Mbit/s: 0.95 C = 87.1.
                cell("rtt50-5pct", "coretun", 88.0, 60.0),
                cell("rtt50-5pct", "tcp-bbr", 88.5, 390.0),
                cell("rtt50-5pct", "kcptun", 50.0, 120.0),
                // C = 43.4 Mbit/s: 0.92 C = 40.0.
                cell("rtt100-10pct", "coretun", 40.5, 150.0),
                cell("rtt100-10pct", "tcp-bbr", 36.0, 400.0),
                cell("clean", "coretun", 189.0, 1.0),
                cell("clean", "tcp", 192.0, 1.0),
            ],
            ..Report::default()
        };
        let met: Vec<Option<bool>> = goals(&report).iter().map(Goal::met).collect();
        assert_eq!(
            met,
            [true, false, true, true, true, true, true]
                .map(Some)
                .to_vec()
        );
        let md = markdown(&report);
        assert!(
            md.contains("| coretun | 50 ms, 100 Mbit/s, 5%: goodput >= tcp-bbr's (Mbit/s) | 88.0 | 88.5 | **no** |"),
            "{md}"
        );
        // Without kcptun's figure that goal cannot be judged.
        let mut partial = report.clone();
        partial.cells.retain(|c| c.tunnel != "kcptun");
        assert_eq!(goals(&partial)[2].met(), None);
    }

    #[test]
    fn markdown_has_a_row_per_tunnel_and_the_errors() {
        let report = synthetic();
        let md = markdown(&report);
        assert!(md.starts_with("# "));
        for needle in [
            "2026-11-22 13:40 UTC",
            "Test CPU, 2 cores, Linux 6.1",
            "`scripts/lossbench.sh --quick`",
            "cubic",
            "10 s after a 2 s warm-up",
            "200 round trips",
            "* **engine**: engine across the emulated link",
        ] {
            assert!(md.contains(needle), "no {needle:?} in\n{md}");
        }
        // rtt50-5pct: C = 100 x 0.95 x 1448/1500 = 91.707 Mbit/s.
        let section = md
            .split("## rtt50-5pct: 50 ms RTT, 100 Mbit/s, 5% loss, C = 91.7 Mbit/s")
            .nth(1)
            .expect("rtt50-5pct table")
            .split("\n## ")
            .next()
            .unwrap();
        // tcp: 0.5 x C = 45.853; p50 50.12 ms; p99 50 x 21 + 0.4 = 1050.4 ms; 1.04 + 0.05 wire.
        assert!(
            section.contains("| tcp | 45.9 | 0.50 | 45.9 | 50.1 | 1050.4 | 0 | 1.090 | — | 0.03 |"),
            "{section}"
        );
        assert!(
            section.contains("| kcptun | — | — | — | — | — | — | — | — | 0.00 |"),
            "{section}"
        );
        assert!(
            section.contains(
                "| engine | 82.5 | 0.90 | 82.5 | 50.3 | 150.4 | 2 | 1.290 | 3.00 | 0.03 |"
            ),
            "{section}"
        );
        assert!(
            section.contains("* kcptun: kcptun did not come up within 10 s"),
            "{section}"
        );
        // Summary row of the same profile.
        assert!(
            md.contains("| rtt50-5pct | 91.7 | 45.9 (0.50) | — | 82.5 (0.90) |"),
            "{md}"
        );
        // The clean profile (C = 200 x 1448/1500 = 193.07): sub-millisecond round trips keep
        // two decimals.
        assert!(
            md.contains("| tcp | 193.1 | 1.00 | 193.1 | 0.12 | 0.40 |"),
            "{md}"
        );
    }

    #[test]
    fn missing_cells_and_odd_text_stay_in_the_table() {
        let mut report = synthetic();
        report.cells.retain(|c| c.tunnel != "engine");
        report.tunnels.push(TunnelInfo {
            name: "a|b".to_owned(),
            description: "two\nlines".to_owned(),
        });
        report.cells.push(Cell {
            profile: "clean".to_owned(),
            tunnel: "stray".to_owned(),
            errors: vec!["first line\nsecond line".to_owned()],
            ..Cell::default()
        });
        let md = markdown(&report);
        assert!(md.contains("| engine | — | — | — | — | — | — | — | — |"));
        assert!(md.contains("| a\\|b |"));
        assert!(md.contains("* **a|b**: two lines"));
        assert!(md.contains("* stray: first line second line"));
    }

    #[test]
    fn the_loss_plots_use_the_largest_group_without_bursts() {
        let report = synthetic();
        let group: Vec<&str> = loss_group(&report)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(group, ["rtt50", "rtt50-1pct", "rtt50-5pct"]);
        let series = loss_series(&report, &loss_group(&report), |c| c.goodput_bps);
        let kcptun = series.iter().find(|s| s.name == "kcptun").unwrap();
        // The failed 5% cell is skipped, not plotted as zero.
        assert_eq!(kcptun.points.len(), 2);
        assert!(kcptun.points.iter().all(|&(x, _)| x < 2.0));
    }

    #[test]
    fn an_empty_report_still_writes() {
        let dir = TempDir::new("empty");
        write(&dir.0, &Report::default()).unwrap();
        for f in FILES {
            assert!(dir.0.join(f).is_file(), "{f} missing");
        }
        let back: Report =
            serde_json::from_str(&fs::read_to_string(dir.0.join("results.json")).unwrap()).unwrap();
        assert_eq!(back, Report::default());
    }

    #[test]
    fn single_points_and_all_missing_figures_still_plot() {
        // One loss point, every figure missing.
        let mut report = synthetic();
        report.profiles.retain(|p| p.name == "rtt50");
        for c in &mut report.cells {
            *c = Cell {
                profile: c.profile.clone(),
                tunnel: c.tunnel.clone(),
                ..Cell::default()
            };
        }
        let dir = TempDir::new("sparse");
        write(&dir.0, &report).unwrap();
        // One loss point with figures.
        let mut report = synthetic();
        report.profiles.retain(|p| p.name == "rtt50-1pct");
        write(&dir.0, &report).unwrap();
        let svg = fs::read_to_string(dir.0.join("goodput_vs_loss.svg")).unwrap();
        assert!(svg.contains("engine"));
    }
}
