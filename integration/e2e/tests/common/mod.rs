#![allow(dead_code)]

pub mod recording_store;
pub mod scenarios;
