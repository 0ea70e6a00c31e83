//! `dso-test-support`: helpers that more than one crate's tests use, so each exists once.
//! Test code only: it is a dev-dependency of the product crates (and a dependency of the
//! end-to-end suite), never linked into a product binary, and it panics with a clear message
//! instead of returning errors.
//!
//! - [`metrics`]: the metric table of docs/monitoring.md and the `# TYPE` lines of a `/metrics`
//!   exposition as sets, so a test can assert that every exposed metric is documented.
//! - [`faults`]: tests/aws-fault-proxy.py in front of an AWS endpoint (moto), an endpoint a test
//!   can take down, throttle, deny, slow or cut.

pub mod faults;
pub mod metrics;

pub use faults::FaultProxy;
