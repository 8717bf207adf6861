//! Misiva delivers Apple push notifications from RabbitMQ.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.

pub mod admin;
pub mod amqp;
pub mod apns;
pub mod app;
pub mod bounded;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod dlq;
pub mod events;
pub mod job;
pub mod jwt;
pub mod ops;
pub mod outcome;
pub mod publish;
pub mod sim;
pub mod supervisor;
pub mod telemetry;
pub mod trace;
