//! Reports: funnels over the events, computed by DataFusion aggregates.

pub mod campaign;
pub mod funnel;
pub mod retention;
pub mod saved;
pub mod spec;
