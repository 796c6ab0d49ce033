//! Tenant bounds that need bookkeeping across actors: open ingest sessions per organization.
//! A session holds a [`SessionPermit`] for as long as it lives; dropping the session (a DELETE,
//! an idle publisher, a stop, a replaced connection, a failed stream) gives the permit back, so
//! no code path has to remember to decrement a counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::messages::IngestTransport;

type GaugeKey = (String, IngestTransport);

/// Open sessions per (organization, transport) on this node.
#[derive(Debug, Default)]
pub struct SessionGauge {
    open: Mutex<HashMap<GaugeKey, usize>>,
}

/// One open session of an organization; counted until dropped, with the node capacity it was
/// admitted with.
#[derive(Debug)]
pub struct SessionPermit {
    gauge: Arc<SessionGauge>,
    key: GaugeKey,
    capacity: Option<crate::capacity::CapacityPermit>,
}

impl SessionPermit {
    /// The session also holds `capacity` until it ends.
    pub fn with_capacity(mut self, capacity: crate::capacity::CapacityPermit) -> Self {
        self.capacity = Some(capacity);
        self
    }
}

impl SessionGauge {
    /// A permit for one more session of `organization_id` over `transport`, unless it has
    /// `max` open already.
    pub fn try_acquire(
        self: &Arc<Self>,
        organization_id: &str,
        transport: IngestTransport,
        max: usize,
    ) -> Option<SessionPermit> {
        let key = (organization_id.to_string(), transport);
        let mut open = self
            .open
            .lock()
            .expect("the session gauge is never poisoned: no panic while held");
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SessionPermit {
            gauge: self.clone(),
            key,
            capacity: None,
        })
    }

    /// Sessions of `organization_id` over `transport` open now.
    pub fn num_open(&self, organization_id: &str, transport: IngestTransport) -> usize {
        let open = self
            .open
            .lock()
            .expect("the session gauge is never poisoned: no panic while held");
        open.get(&(organization_id.to_string(), transport))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut open = self
            .gauge
            .open
            .lock()
            .expect("the session gauge is never poisoned: no panic while held");
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_organization_and_transport_and_return_on_drop() {
        let gauge = Arc::new(SessionGauge::default());
        let a1 = gauge.try_acquire("a", IngestTransport::Rtp, 2).unwrap();
        let a2 = gauge.try_acquire("a", IngestTransport::Rtp, 2).unwrap();
        assert!(gauge.try_acquire("a", IngestTransport::Rtp, 2).is_none());
        // Other organizations and the other transport have their own budget.
        let b = gauge.try_acquire("b", IngestTransport::Rtp, 2).unwrap();
        let w = gauge.try_acquire("a", IngestTransport::Whip, 1).unwrap();
        assert!(gauge.try_acquire("a", IngestTransport::Whip, 1).is_none());
        assert_eq!(gauge.num_open("a", IngestTransport::Rtp), 2);
        drop(a1);
        assert_eq!(gauge.num_open("a", IngestTransport::Rtp), 1);
        let a3 = gauge.try_acquire("a", IngestTransport::Rtp, 2).unwrap();
        drop((a2, a3, b, w));
        assert_eq!(gauge.num_open("a", IngestTransport::Rtp), 0);
        assert_eq!(gauge.num_open("a", IngestTransport::Whip), 0);
        assert!(gauge.open.lock().unwrap().is_empty());
    }
}
