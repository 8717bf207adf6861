//! Misiva delivers Apple push notifications from RabbitMQ.
//!
//! See ARCHITECTURE.md at the repository root for the map of this crate.

pub mod job;
pub mod outcome;
pub mod config;
pub mod jwt;
pub mod apns;
pub mod sim;
pub mod dispatch;
pub mod amqp;
pub mod app;
pub mod telemetry;
pub mod cli;
pub mod publish;
