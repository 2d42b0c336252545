//! Throwaway certificates for benchmarks (`tests/bench/node.sh`): a CA, the node's identity
//! (node id `bench-node`) in a state directory, and an agent bundle (`agent-bench`).
//! A real node enrolls with the management server instead (`ferry-node enroll`).

use anyhow::Context;
use ferry_tls::pki::{Ca, Role};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(state), Some(agent)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: certs NODE_STATE_DIR AGENT_BUNDLE");
    };
    let ca = Ca::create("bench CA").context("CA")?;
    let (c, k) = ca
        .issue(Role::Agent, "bench-node", 30)
        .context("node cert")?;
    ferry_node::enroll::install_identity(std::path::Path::new(&state), &c, &k, ca.cert_pem())
        .context("installing the node identity")?;
    let (c, k) = ca.issue(Role::Agent, "bench", 30).context("agent cert")?;
    std::fs::write(&agent, format!("{c}{k}{}", ca.cert_pem())).context("agent bundle")?;
    Ok(())
}
