//! The agent's Prometheus endpoint: the shared responder
//! ([`thaw_store::prometheus::serve_metrics`]) rendering the agent's metrics.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::agent::Agent;

/// Binds `addr` and answers metrics requests until the runtime stops.
pub(crate) async fn serve_metrics(
    addr: SocketAddr,
    agent: Arc<Agent>,
) -> std::io::Result<SocketAddr> {
    thaw_store::prometheus::serve_metrics(addr, Arc::new(move || agent.render_metrics())).await
}
