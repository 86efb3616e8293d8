//! The simulated market: a deterministic model of the venue (markets, Yes/No mirror books,
//! orders, trades, tick size changes, new markets, resolutions) that writes the venue's frames
//! byte for byte, with the real traffic's quirks ([`RealShape`]). It is the truth the
//! end-to-end tests compare every book with. No I/O, no clock: time is passed in, randomness
//! comes from the seed.

pub mod capture;
pub mod dst;
pub mod frames;
pub mod gamma;
pub mod model;
pub mod rng;
pub mod shape;
pub mod truth;
pub mod venue;

pub use capture::{capture_lines, capture_lines_yes_only};
pub use model::{EventKind, SimConfig, SimExchange, SimFrame, SimMarket};
pub use shape::{RealShape, ShapeCounters};
