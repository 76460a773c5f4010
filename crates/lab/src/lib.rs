//! cyphonic lab: real-kernel test networks built from network namespaces.
//!
//! A [`Lab`] owns everything it creates (namespaces, veths inside them,
//! `/etc/netns/<ns>` entries, spawned processes, a work directory for logs
//! and captures) under a name prefix unique to the run, and removes exactly
//! that on drop, so labs run in parallel (cargo nextest, helpers) without
//! colliding and never touch another run's namespaces.
//!
//! Used by `cyphonic lab <scenario>`, the integration tests and the demo.
//! Everything here needs root.

pub mod capture;
pub mod loadgen;
pub mod netns;
pub mod scenarios;
pub mod wait;
pub mod webdriver;

mod interrupt;
mod process;

pub use capture::Capture;
pub use interrupt::clean_up_on_signals;
pub use netns::Lab;
pub use wait::wait_until;
