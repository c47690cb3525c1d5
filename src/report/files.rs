//! Writes a run's file reports (JUnit XML, JSON, HTML) into the report directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Collector, Event, ReportError, Reporter, RunReport, html, json, junit};

/// Where the file reports of a run are, once written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    pub dir: PathBuf,
    pub junit: PathBuf,
    pub json: PathBuf,
    pub html: PathBuf,
}

impl ReportFiles {
    /// The paths the reports get in `dir` (nothing is written).
    pub fn in_dir(dir: &Path) -> ReportFiles {
        ReportFiles {
            dir: dir.to_path_buf(),
            junit: dir.join("junit.xml"),
            json: dir.join("report.json"),
            html: dir.join("report.html"),
        }
    }

    pub fn paths(&self) -> [&Path; 3] {
        [&self.junit, &self.json, &self.html]
    }
}

/// Writes `junit.xml`, `report.json` and `report.html` into `dir`, creating it.
/// Each file is replaced whole, so a reader never sees half a report.
pub fn write_all(report: &RunReport, dir: &Path) -> Result<ReportFiles, ReportError> {
    let files = ReportFiles::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    write_replacing(&files.junit, junit::to_xml(report)?.as_bytes())?;
    write_replacing(&files.json, json::to_json(report)?.as_bytes())?;
    write_replacing(&files.html, html::to_html(report).as_bytes())?;
    Ok(files)
}

fn write_replacing(path: &Path, contents: &[u8]) -> Result<(), ReportError> {
    let error = |source| ReportError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(error)?;
    temp.write_all(contents).map_err(error)?;
    temp.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

/// Writes the file reports when the run finishes, or, when it is interrupted,
/// the report of the scenarios that finished, marked interrupted.
pub struct FileReporter {
    dir: PathBuf,
    collector: Collector,
    written: Option<ReportFiles>,
}

impl FileReporter {
    pub fn new(dir: impl Into<PathBuf>) -> FileReporter {
        FileReporter {
            dir: dir.into(),
            collector: Collector::default(),
            written: None,
        }
    }

    /// The files written, once `RunFinished` or `RunInterrupted` has been handled.
    pub fn written(&self) -> Option<&ReportFiles> {
        self.written.as_ref()
    }
}

impl Reporter for FileReporter {
    fn event(&mut self, event: &Event) -> Result<(), ReportError> {
        self.collector.event(event);
        match event {
            Event::RunFinished { report } => {
                self.written = Some(write_all(report, &self.dir)?);
            }
            Event::RunInterrupted => {
                let report = self.collector.interrupted_report();
                self.written = Some(write_all(&report, &self.dir)?);
            }
            _ => {}
        }
        Ok(())
    }
}
