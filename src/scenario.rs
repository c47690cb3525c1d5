//! Scenarios: declarative YAML files under `scenarios/` (one per concern),
//! parsed into typed steps ([`spec`]), judged by named checks ([`checks`]) on
//! the pipeline's releases ([`pipeline`]), run against a cluster by the
//! [`runner`], which emits [`crate::report::Event`]s for the reporters.

pub mod builtin;
pub mod checks;
pub mod dataplane;
pub mod pipeline;
pub mod runner;
pub mod spec;

pub use spec::{Scenario, SpecError};
