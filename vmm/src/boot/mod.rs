//! Booting guests: the built-in test guest and Linux.

pub mod linux;
pub mod testguest;
