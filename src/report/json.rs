//! The JSON report: the [`RunReport`] serialized as is, and its JSON Schema
//! (`docs/report-schema.json`, documented in `docs/report-schema.md`).

use super::{ReportError, RunReport};

/// The report as pretty-printed JSON.
pub fn to_json(report: &RunReport) -> Result<String, ReportError> {
    serde_json::to_string_pretty(report).map_err(|source| ReportError::Serialize {
        format: "JSON",
        source: Box::new(source),
    })
}

/// The JSON Schema of `report.json`, generated from the types themselves so it cannot drift
/// from what [`to_json`] writes.
pub fn schema() -> serde_json::Value {
    schemars::schema_for!(RunReport).to_value()
}
