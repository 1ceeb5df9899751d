//! Booting guests: the built-in test guest and Linux.

pub mod linux;
pub mod runner;
pub mod testguest;
