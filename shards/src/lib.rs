//! polybook's runtime: the thread-per-core engine on glommio, the simulated exchange's servers
//! and the command-line tools. Only this crate names glommio.

pub mod api;
pub mod config;
pub mod engine;
pub mod export;
pub mod net;
pub mod parquet_out;
pub mod replay;
pub mod sim_server;
