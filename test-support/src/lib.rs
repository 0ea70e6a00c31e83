//! `dso-test-support`: helpers that more than one crate's tests use, so each exists once.
//! Test code only: it is a dev-dependency of the product crates (and a dependency of the
//! end-to-end suite), never linked into a product binary, and it panics with a clear message
//! instead of returning errors.
//!
//! - [`metrics`]: the metric table of docs/monitoring.md and the `# TYPE` lines of a `/metrics`
//!   exposition as sets, so a test can assert that every exposed metric is documented.

pub mod metrics;
