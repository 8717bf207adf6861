//! Every integration test, in one test binary. Each file of `tests/` is a
//! module here, named as the file, so a test's full name says where it lives
//! (`cluster::the_queue_leader_is_lost_under_load`) and `scripts/test.sh`
//! picks a group by its module (`cargo test --test suite -- cluster::`).
//!
//! Why one binary: each test binary links the crate and every dependency, and
//! instantiates the generic code of tokio, hyper and lapin anew. Twenty-one
//! binaries cost most of the test build of a fresh machine; one costs one
//! link. `tests/tidy.rs` checks that every file of `tests/` is declared here,
//! since with `autotests = false` cargo no longer finds them by itself.

mod support;

mod apns_sim;
mod apps;
mod cluster;
mod dlq;
mod examples;
mod failures;
mod faults;
mod helm;
mod hostile;
mod live_activity;
mod metrics;
mod observability;
mod pool;
mod retries;
mod schema;
mod shards;
mod simulator;
mod supervision;
mod tidy;
mod urgent;
mod worker;
