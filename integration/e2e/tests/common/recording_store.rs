//! Object store hooks that record completed writes in order and can fail
//! writes to chosen keys: to check the manifest-last rule on any backend.

use std::fmt;
use std::sync::Mutex;

use object_store::path::Path;
use object_store::{ObjectStore, Result};
use thaw_bench::hooked_store::{HookedStore, StoreHooks};

/// An object store that records its writes ([`WriteRecorder`]).
pub type RecordingStore = HookedStore<WriteRecorder>;

#[derive(Debug, Default)]
pub struct WriteRecorder {
    pub completed_writes: Mutex<Vec<String>>,
    /// Writes to keys containing this string fail.
    pub fail_writes_containing: Mutex<Option<String>>,
}

impl StoreHooks for WriteRecorder {
    fn describe(&self, inner: &dyn ObjectStore, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recording({inner})")
    }

    fn before_write(&self, location: &Path) -> Result<()> {
        let fail = self.fail_writes_containing.lock().unwrap();
        match fail.as_deref() {
            Some(s) if location.as_ref().contains(s) => Err(object_store::Error::Generic {
                store: "recording",
                source: format!("injected failure writing {location}").into(),
            }),
            _ => Ok(()),
        }
    }

    fn write_completed(&self, location: &Path) {
        self.completed_writes
            .lock()
            .unwrap()
            .push(location.to_string());
    }
}
