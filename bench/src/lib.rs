//! `polybook-bench`: criterion micro-benches (`benches/core.rs`, `benches/compare.rs`) and the
//! end-to-end load harness `polybook-e2e-bench` (`src/e2e/`, one module per phase). Results
//! and how they were measured: `BENCHMARKS.md` at the repository root.
