//! The query layer: DataFusion sessions over catalog snapshots, condition trees, read-only
//! SQL and roaring bitmap functions.
//!
//! In: the catalog's Delta tables (the wide tables `users`, `events`, `orders` and the tag
//! bitmaps the build writes). Out: audience counts, member bitmaps, previews, plans and SQL
//! results as Arrow record batches. A [`session::Engine`] hands out one [`session::Session`]
//! per request, pinned to one version of every table; condition trees are checked against the
//! catalog ([`condition`]), answered from tag bitmaps where they cover the tree and by a scan
//! of the compiled SQL ([`compile`]) where they do not ([`count`]); conditions on a person's
//! events or orders are totalled per person in arrays (`per_person`). Nothing here knows HTTP.

#![forbid(unsafe_code)]

pub mod bitmap_functions;
pub mod compile;
pub mod condition;
pub mod count;
mod error;
pub mod fields;
pub mod funnel_people;
pub mod masking;
mod per_person;
mod scan_filters;
pub mod session;
mod tags;
mod text_equality;
pub mod window_funnel;

pub use count::{AnswerPath, CountAnswer, PathChoice, Prepared};
pub use error::{Error, Result};
pub use session::{Engine, Limits, RoleView, Session};
