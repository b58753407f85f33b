//! Audience packs: roaring bitmaps of user ids, made from condition trees, SQL, uploaded lists
//! or set expressions over other packs; versioned, refreshed on a schedule, exported.

#![forbid(unsafe_code)]

pub mod error;
pub mod export;
pub mod expr;
pub mod lookalike;
pub mod pack;
pub mod running;
pub mod schedule;
pub mod store;
pub mod upload;

pub use error::{Error, Result};
