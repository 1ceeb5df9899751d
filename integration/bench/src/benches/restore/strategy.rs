//! The restore strategies the benchmark compares, and what each one means
//! in terms of a checkpoint layout and the fetch agent's configuration.
//! Free of I/O: the benchmark's drivers carry the plans out.

use std::fmt;
use std::str::FromStr;

use fetch_agent::fetch::FetchConfig;
use fetch_agent::policy::{self, StreamConfig};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Strategy {
    /// Fetch every block, then run.
    #[serde(rename = "eager")]
    Eager,
    /// 4 KiB pages on demand: the baseline.
    #[serde(rename = "lazy-4k")]
    Lazy4k,
    /// Blocks of neighbouring pages in physical order, on demand.
    #[serde(rename = "fixed-blocks")]
    FixedBlocks,
    /// Locality blocks (layout learned from earlier restores), on demand.
    #[serde(rename = "locality")]
    Locality,
    /// Locality blocks, and the next ones in layout order after each fault.
    #[serde(rename = "locality+prefetch")]
    LocalityPrefetch,
    /// As above, plus the rest streamed in layout order in the background.
    #[serde(rename = "locality+prefetch+stream")]
    LocalityPrefetchStream,
    /// Knows the measured run's pages in order and streams exactly those
    /// ahead at the link's full speed.
    #[serde(rename = "oracle")]
    Oracle,
    /// Exactly what a default `thaw vm restore --agent` does with a
    /// checkpoint relaid out from profiles (`thaw checkpoint relayout`):
    /// the agent's default configuration on the profiled checkpoint.
    #[serde(rename = "thaw")]
    Thaw,
}

impl Strategy {
    pub const COUNT: usize = 8;
    /// Every strategy, simplest first (the order of tables and charts).
    pub const ALL: [Strategy; Strategy::COUNT] = [
        Strategy::Eager,
        Strategy::Lazy4k,
        Strategy::FixedBlocks,
        Strategy::Locality,
        Strategy::LocalityPrefetch,
        Strategy::LocalityPrefetchStream,
        Strategy::Oracle,
        Strategy::Thaw,
    ];

    /// Position in [`Strategy::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Eager => "eager",
            Strategy::Lazy4k => "lazy-4k",
            Strategy::FixedBlocks => "fixed-blocks",
            Strategy::Locality => "locality",
            Strategy::LocalityPrefetch => "locality+prefetch",
            Strategy::LocalityPrefetchStream => "locality+prefetch+stream",
            Strategy::Oracle => "oracle",
            Strategy::Thaw => "thaw",
        }
    }

    /// How the strategy restores.
    pub fn plan(self) -> Plan {
        let defaults = policy::Config::default();
        let on_demand = policy::Config {
            prefetch_window: 0,
            stream: None,
            zero_fill_ahead: false,
            ..defaults.clone()
        };
        let prefetch = policy::Config {
            prefetch_window: PREFETCH_WINDOW,
            ..on_demand.clone()
        };
        let lazy = |layout, policy| Plan::Lazy {
            layout,
            policy,
            fetch: FetchConfig::default(),
        };
        match self {
            Strategy::Eager => Plan::Eager {
                layout: Layout::Profiled,
            },
            Strategy::Lazy4k => lazy(
                Layout::Pages,
                policy::Config {
                    // Zero pages are known from the manifest and cost no
                    // fetch, but every one of them still faults.
                    zero_window: 1,
                    ..on_demand
                },
            ),
            Strategy::FixedBlocks => lazy(Layout::Physical, on_demand),
            Strategy::Locality => lazy(Layout::Profiled, on_demand),
            Strategy::LocalityPrefetch => lazy(Layout::Profiled, prefetch),
            Strategy::LocalityPrefetchStream => lazy(
                Layout::Profiled,
                policy::Config {
                    stream: Some(StreamConfig {
                        bytes_per_sec: Some(BACKGROUND_STREAM_BYTES_PER_SEC),
                        max_in_flight: policy::DEFAULT_STREAM_IN_FLIGHT,
                    }),
                    zero_fill_ahead: true,
                    ..prefetch
                },
            ),
            Strategy::Oracle => Plan::Lazy {
                layout: Layout::Oracle,
                policy: policy::Config {
                    stream: Some(StreamConfig {
                        bytes_per_sec: None,
                        max_in_flight: ORACLE_IN_FLIGHT,
                    }),
                    zero_fill_ahead: true,
                    ..prefetch
                },
                fetch: FetchConfig {
                    stream_slots: ORACLE_IN_FLIGHT,
                    ..FetchConfig::default()
                },
            },
            Strategy::Thaw => lazy(Layout::Profiled, defaults),
        }
    }
}

/// Prefetch window of the `locality+prefetch*` strategies.
pub const PREFETCH_WINDOW: usize = 4;
/// A fixed background budget for `locality+prefetch+stream` (a modest
/// share of any of the links).
pub const BACKGROUND_STREAM_BYTES_PER_SEC: u64 = 100 << 20;
/// Streaming fetches the oracle keeps in flight: the default ceiling, so
/// the oracle streams at least as fast as `thaw` can.
pub const ORACLE_IN_FLIGHT: usize = policy::DEFAULT_STREAM_IN_FLIGHT;

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Strategy::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Strategy::ALL.iter().map(|x| x.name()).collect();
                format!("unknown strategy {s:?} (one of: {})", names.join(", "))
            })
    }
}

/// Which checkpoint of the workload's memory a strategy restores from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One page per block, physical order.
    Pages,
    /// Default-size blocks in physical order.
    Physical,
    /// Default-size blocks in the order learned from the earlier traces.
    Profiled,
    /// Default-size blocks in the order of the measured trace itself.
    Oracle,
}

#[derive(Debug, Clone)]
pub enum Plan {
    Eager {
        layout: Layout,
    },
    Lazy {
        layout: Layout,
        policy: policy::Config,
        fetch: FetchConfig,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in Strategy::ALL {
            assert_eq!(s.name().parse::<Strategy>().unwrap(), s);
        }
        let err = "lazy".parse::<Strategy>().unwrap_err();
        assert!(err.contains("lazy-4k") && err.contains("oracle"), "{err}");
    }

    #[test]
    fn thaw_is_the_agent_default_on_the_profiled_checkpoint() {
        let Plan::Lazy {
            layout,
            policy,
            fetch,
        } = Strategy::Thaw.plan()
        else {
            panic!("thaw restores lazily")
        };
        assert_eq!(layout, Layout::Profiled);
        assert_eq!(policy, policy::Config::default());
        assert_eq!(
            format!("{fetch:?}"),
            format!("{:?}", FetchConfig::default())
        );
    }

    #[test]
    fn only_the_oracle_reads_the_measured_trace() {
        for s in Strategy::ALL {
            let layout = match s.plan() {
                Plan::Eager { layout } | Plan::Lazy { layout, .. } => layout,
            };
            assert_eq!(layout == Layout::Oracle, s == Strategy::Oracle, "{s}");
        }
    }
}
