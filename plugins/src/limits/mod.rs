//! Traffic limits: rate limits (GCRA), quotas per calendar period, concurrency limits, and
//! the plans that give consumers their limits.

pub mod calendar;
pub mod concurrency;
pub mod counters;
pub mod gcra;
pub mod keys;
pub mod plans;
pub mod quota;
pub mod rate_limit;
