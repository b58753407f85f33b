//! Reports: funnels over the events, computed by DataFusion aggregates.

#![forbid(unsafe_code)]

pub mod campaign;
pub mod funnel;
pub mod retention;
pub mod saved;
pub mod spec;
