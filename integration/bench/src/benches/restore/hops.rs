//! Where a demand fetch spends its time: the fetch agent's block client and
//! the block server mark each block request's way with trace events
//! (`thaw_block_protocol::wire::hop`); a tracing layer records them with the
//! time they were emitted, and [`split`] pairs each demand fetch's four marks
//! into the leg to the server, the time at the server and the leg back.
//!
//! The bench runs the agent and the block server in one process, so one
//! clock times both ends. The legs to and from the server include the
//! emulated link, the relay thread and both ends' QUIC processing and
//! scheduling; the time at the server is its lookup of the block.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use thaw_block_protocol::wire::{hop, Priority};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::benches::latency::{percentiles, Percentiles};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    RequestSent,
    RequestReceived,
    ResponseSent,
    ResponseReceived,
}

impl Hop {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            hop::REQUEST_SENT => Some(Self::RequestSent),
            hop::REQUEST_RECEIVED => Some(Self::RequestReceived),
            hop::RESPONSE_SENT => Some(Self::ResponseSent),
            hop::RESPONSE_RECEIVED => Some(Self::ResponseReceived),
            _ => None,
        }
    }
}

/// The marks of one request, in the order they happen.
const WAY: [Hop; 4] = [
    Hop::RequestSent,
    Hop::RequestReceived,
    Hop::ResponseSent,
    Hop::ResponseReceived,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopEvent {
    pub at: Instant,
    pub hop: Hop,
    pub block: u32,
    /// The wire value of the request's priority.
    pub priority: u8,
}

/// Where the layer puts what it records; shared with whoever reads it.
#[derive(Debug, Clone, Default)]
pub struct HopLog(Arc<Mutex<Vec<HopEvent>>>);

impl HopLog {
    /// Everything recorded since the last take.
    pub fn take(&self) -> Vec<HopEvent> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A layer recording the hop events into this log (and nothing else).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        HopLayer { log: self.clone() }.with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(hop::TARGET, tracing::Level::TRACE),
        )
    }
}

struct HopLayer {
    log: HopLog,
}

impl<S: tracing::Subscriber> Layer<S> for HopLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let at = Instant::now();
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let (Some(hop), Some(block), Some(priority)) =
            (fields.hop, fields.block, fields.priority)
        {
            self.log
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(HopEvent {
                    at,
                    hop,
                    block,
                    priority,
                });
        }
    }
}

#[derive(Default)]
struct Fields {
    hop: Option<Hop>,
    block: Option<u32>,
    priority: Option<u8>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "hop" {
            self.hop = Hop::from_name(value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "block" => self.block = u32::try_from(value).ok(),
            "priority" => self.priority = u8::try_from(value).ok(),
            _ => {}
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}

/// One leg's times over a run's demand fetches, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    pub mean: f64,
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

fn leg(samples: &[f64]) -> Option<Leg> {
    Some(Leg {
        mean: samples.iter().sum::<f64>() / samples.len() as f64,
        percentiles: percentiles(samples)?,
    })
}

/// The legs of the demand-priority fetches of one run, in µs: those a
/// fault waits for (and, in an `eager` run, every fetch: it asks for each
/// block at demand priority).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandFetchSplit {
    /// Demand fetches with all four marks.
    pub fetches: usize,
    /// Request written by the client to request read by the server.
    pub to_server_us: Leg,
    /// Request read to answer handed to QUIC, at the server.
    pub at_server_us: Leg,
    /// Answer handed to QUIC to answer read by the client.
    pub back_us: Leg,
    /// Request written to answer read.
    pub total_us: Leg,
}

/// Pairs the marks of each demand fetch (per block, in time order: sent,
/// received, answered, answer read) and summarises the legs; `None` when no
/// demand fetch has all four. Marks of other priorities are ignored, and an
/// incomplete sequence is dropped when the block's next request starts.
pub fn split(events: &[HopEvent]) -> Option<DemandFetchSplit> {
    let mut by_block: HashMap<u32, Vec<&HopEvent>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.priority == Priority::Demand as u8)
    {
        by_block.entry(e.block).or_default().push(e);
    }
    let mut legs: [Vec<f64>; 4] = Default::default();
    for marks in by_block.values_mut() {
        marks.sort_by_key(|e| e.at);
        let mut seq: Vec<Instant> = Vec::with_capacity(4);
        for e in marks.iter() {
            if e.hop == Hop::RequestSent {
                seq.clear();
                seq.push(e.at);
            } else if !seq.is_empty() && e.hop == WAY[seq.len()] {
                seq.push(e.at);
            }
            if seq.len() == WAY.len() {
                let us = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1e6;
                legs[0].push(us(seq[0], seq[1]));
                legs[1].push(us(seq[1], seq[2]));
                legs[2].push(us(seq[2], seq[3]));
                legs[3].push(us(seq[0], seq[3]));
                seq.clear();
            }
        }
    }
    let [to_server, at_server, back, total] = legs;
    Some(DemandFetchSplit {
        fetches: total.len(),
        to_server_us: leg(&to_server)?,
        at_server_us: leg(&at_server)?,
        back_us: leg(&back)?,
        total_us: leg(&total)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ev(t0: Instant, us: u64, hop: Hop, block: u32, priority: Priority) -> HopEvent {
        HopEvent {
            at: t0 + Duration::from_micros(us),
            hop,
            block,
            priority: priority as u8,
        }
    }

    #[test]
    fn pairs_each_demand_fetch_and_ignores_other_priorities() {
        let t0 = Instant::now();
        use Hop::*;
        let events = vec![
            ev(t0, 0, RequestSent, 7, Priority::Demand),
            ev(t0, 5, RequestSent, 9, Priority::Background),
            ev(t0, 100, RequestReceived, 7, Priority::Demand),
            ev(t0, 120, RequestReceived, 9, Priority::Background),
            ev(t0, 110, ResponseSent, 7, Priority::Demand),
            ev(t0, 400, ResponseReceived, 7, Priority::Demand),
            ev(t0, 900, ResponseReceived, 9, Priority::Background),
            // A second demand fetch, of another block.
            ev(t0, 1000, RequestSent, 3, Priority::Demand),
            ev(t0, 1300, RequestReceived, 3, Priority::Demand),
            ev(t0, 1310, ResponseSent, 3, Priority::Demand),
            ev(t0, 1800, ResponseReceived, 3, Priority::Demand),
        ];
        let s = split(&events).unwrap();
        assert_eq!(s.fetches, 2);
        assert_eq!(s.to_server_us.mean, 200.0);
        assert_eq!(s.at_server_us.mean, 10.0);
        assert_eq!(s.back_us.mean, 390.0);
        assert_eq!(s.total_us.mean, 600.0);
        assert_eq!(s.total_us.percentiles.max, 800.0);
    }

    #[test]
    fn an_unfinished_fetch_is_dropped_when_the_block_is_asked_again() {
        let t0 = Instant::now();
        use Hop::*;
        let events = vec![
            ev(t0, 0, RequestSent, 1, Priority::Demand),
            ev(t0, 50, RequestReceived, 1, Priority::Demand),
            // Asked again (a retry): the first try's marks are dropped.
            ev(t0, 500, RequestSent, 1, Priority::Demand),
            ev(t0, 600, RequestReceived, 1, Priority::Demand),
            ev(t0, 610, ResponseSent, 1, Priority::Demand),
            ev(t0, 700, ResponseReceived, 1, Priority::Demand),
        ];
        let s = split(&events).unwrap();
        assert_eq!(s.fetches, 1);
        assert_eq!(s.total_us.mean, 200.0);
    }

    #[test]
    fn nothing_complete_is_none() {
        let t0 = Instant::now();
        let events = vec![ev(t0, 0, Hop::RequestSent, 1, Priority::Demand)];
        assert_eq!(split(&events), None);
        assert_eq!(split(&[]), None);
    }
}
