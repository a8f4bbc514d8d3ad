//! Placeholder until the report module lands (results.json only).

use std::fs;
use std::io;
use std::path::Path;

use super::model::Report;

pub fn write(dir: &Path, report: &Report) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(io::Error::other)?;
    fs::write(dir.join("results.json"), json)
}

pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    for c in &report.cells {
        s += &format!("{c:?}\n");
    }
    s
}
