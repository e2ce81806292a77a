//! One operation per volume at a time.
//!
//! COs retry aggressively (kubelet every few seconds, the provisioner on every
//! resync); a second call for a volume that is still being mounted must not
//! race the first. The CSI answer is ABORTED, which tells the CO to retry later.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::DriverError;

/// The set of keys (volume ids or names) with an operation in flight.
#[derive(Clone, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Releases the key when dropped, also when the operation fails or panics.
pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key`, or fails with [`DriverError::Busy`] if it is taken.
    pub fn begin(&self, key: &str) -> Result<Guard, DriverError> {
        let mut keys = self.keys.lock();
        if !keys.insert(key.to_owned()) {
            return Err(DriverError::Busy(key.to_owned()));
        }
        Ok(Guard {
            keys: self.keys.clone(),
            key: key.to_owned(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.keys.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_busy_until_released() {
        let f = InFlight::default();
        let g = f.begin("v1").unwrap();
        assert!(matches!(f.begin("v1"), Err(DriverError::Busy(k)) if k == "v1"));
        assert!(f.begin("v2").is_ok());
        drop(g);
        assert!(f.begin("v1").is_ok());
    }
}
