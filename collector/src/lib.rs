//! The node collector: flow events from the probe's ring buffer to Parquet files in S3, with
//! every loss counted and written down.
//!
//! Data flows through the modules in this order:
//! - [`reader`]: the collector's input, a [`reader::FlowSource`] (the probe's ring buffer and
//!   maps, which the agent hands over; events in memory for tests);
//! - [`service`]: the running collector. Its reader thread waits on the ring buffer
//!   (`AsyncFd`), drains it on wakeups and on a timer, reports residual denies, and has
//!   [`accounting`] turn the packets conntrack counted for allowed flows into events;
//! - [`identity`]: who held each address, what each rule id meant and which endpoints ran in
//!   audit mode, over time, so events are named as of their own timestamp;
//! - [`aggregate`]: enrichment and aggregation per flow, verdict and window ([`clock`] turns
//!   the probe's monotonic stamps into Unix time);
//! - [`record`]: records as Arrow batches of the schema `tollgate_schemas::record` defines;
//! - [`writer`]: Parquet files per partition, rotated by size and age, committed to the
//!   [`spool`] under deterministic object keys (its state, loss ledger included, in a
//!   pre-allocated [`state_file`] that a full disk cannot stop it from saving);
//! - [`chain`]: each spooled file's SHA-256 and facts, sealed with the file numbers given up
//!   into a [`digest`] every hour and at shutdown, signed ([`sign`]: a local Ed25519 key, or
//!   AWS KMS through [`kms`]) and linked to the previous digest;
//! - [`ship`]: spooled files to the [`sink`] (a local directory or S3), removed only once
//!   delivered, retried with backoff;
//! - [`loss`] and [`metrics`]: every event lost (kernel ring buffer full, undecodable,
//!   aggregation table full, spool full, collector restart) becomes a `SKIPDATA` record and a
//!   counter.
//!
//! [`pipeline`] holds the synchronous stages together; [`readback`] reads a flow directory back
//! (`tollgate flows`, the lab's summary); [`config`] is the settings schema.

pub mod accounting;
pub mod aggregate;
pub mod bench;
pub mod chain;
pub mod clock;
pub mod config;
pub mod digest;
pub mod flood;
pub mod identity;
pub mod kms;
pub mod loss;
pub mod metrics;
pub mod ocsf;
pub mod pipeline;
pub mod readback;
pub mod reader;
pub mod record;
pub mod service;
pub mod ship;
pub mod sign;
pub mod sink;
pub mod spool;
pub mod state_file;
pub mod writer;
