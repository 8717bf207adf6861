//! Misiva delivers Apple push notifications from RabbitMQ.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.

mod admin;
mod amqp;
pub mod apns;
pub mod app;
pub mod apps;
mod bounded;
pub mod channels;
pub mod cli;
pub mod config;
pub mod dispatch;
mod dlq;
mod duration;
pub mod events;
pub mod job;
pub mod jwt;
pub mod lane;
pub mod ops;
pub mod outcome;
pub mod publish;
pub mod sim;
mod supervisor;
pub mod telemetry;
mod trace;
