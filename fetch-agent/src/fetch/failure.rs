//! Why a fetch failed: each source's reason, and the error a restore's driver gets when no
//! source delivered a block.

use std::time::Duration;

use thaw_format::CheckpointId;

use crate::cache::FlightError;
use crate::source::BlockSource;

/// Why one source did not deliver a block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("given up: the source went down while this fetch waited")]
    WentDown,
    #[error("{0}")]
    Failed(String),
    #[error("bytes refused: {0}")]
    BadBytes(String),
    #[error("{asked} blocks asked, {returned} returned")]
    ShortRun { asked: usize, returned: usize },
}

/// One source's failure to deliver a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFailure {
    pub source: String,
    pub reason: FailureReason,
}

/// Every source's failure for one block, in the order they were tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceFailures(pub Vec<SourceFailure>);

impl SourceFailures {
    pub(crate) fn push(&mut self, source: &dyn BlockSource, reason: FailureReason) {
        self.0.push(SourceFailure {
            source: source.name().to_owned(),
            reason,
        });
    }
}

impl std::fmt::Display for SourceFailures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no source to ask");
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", e.source, e.reason)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Every source of the checkpoint was tried once; `errors` says why
    /// each did not deliver.
    #[error("block {block} of checkpoint {checkpoint}: no source delivered it ({errors})")]
    AllSourcesFailed {
        checkpoint: CheckpointId,
        block: u32,
        errors: SourceFailures,
    },
    #[error("block {block}: {0}", block = .1)]
    Flight(#[source] FlightError, u32),
}
