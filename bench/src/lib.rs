//! `polybook-bench`: criterion micro-benches (`benches/core.rs`, `benches/compare.rs`) and the
//! end-to-end load harness `polybook-e2e-bench` (`src/e2e/`, one module per phase). Results
//! and how they were measured: `BENCHMARKS.md` at the repository root.
//!
//! `procfs` (CPU time per thread group, the machine, quiet-machine waits) is shared by both
//! load harnesses: `polybook-e2e-bench` and the replay generator `polybook-replay-bench`
//! (`src/replay/`).

pub mod http;
pub mod procfs;
