//! Running CPU-bound work from async code.

/// Runs CPU-heavy work without starving the runtime's other tasks (the
/// uploads) when the runtime has more than one worker.
pub(crate) fn run_cpu<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
