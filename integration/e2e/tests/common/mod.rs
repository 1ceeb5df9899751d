#![allow(dead_code)]

pub mod linux_guest;
pub mod recording_store;
pub mod scenarios;
pub mod stream_peer;
