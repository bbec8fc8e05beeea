//! Worker runtime tests against a real redis-server (started per test on a
//! free port by the testkit).

mod data_loss;
mod queue;
mod retries;
mod scan;
mod stops;
mod support;
