//! `launch relay`: a relay alone (circuit relay v2, with AutoNAT's dial-back service), for
//! runs whose peers are all behind NATs. It trains nothing, joins no run's gossip and answers
//! no sinter request; it only relays, within the limits it is given.

use std::time::Duration;

use anyhow::{Context, Result};
use sinter_comms::net::{self, NetConfig, NetEvent, RelayService};

use crate::cli::RelayArgs;
use crate::peer::{Addresses, runtime};

/// Runs `launch relay` until Ctrl-C or SIGTERM.
pub fn run(args: RelayArgs) -> Result<()> {
    let addresses = Addresses::parse(&args.listen, &args.external, &[])?;
    let key = net::key::load_or_create(&args.key)?;
    let mut config = NetConfig::new(key, "sinter/relay".into());
    config.listen = addresses.listen;
    config.external = addresses.external;
    config.relay_service = RelayService {
        max_circuits: args.max_circuits.max(1),
        max_circuit_bytes: args.max_circuit_mib.saturating_mul(1 << 20),
        max_circuit_duration: Duration::from_secs(args.max_circuit_minutes.clamp(1, 1 << 32) * 60),
    };
    runtime()?.block_on(async {
        let (client, mut events, event_loop) = net::start(config).await?;
        tokio::spawn(event_loop.run());
        println!("peer id {}", client.peer_id());
        for addr in client.listen_addrs().await? {
            println!("relay address {addr}");
        }
        // Requests are refused by dropping them; connections are the relay's business.
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let NetEvent::Request { peer, .. } = event {
                    tracing::debug!(%peer, "a sinter request to a relay: refused");
                }
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("relay stopping");
        anyhow::Ok(())
    })
}
