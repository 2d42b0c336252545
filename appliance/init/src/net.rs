//! Network: owns links, addresses, routes, the hostname, `/etc/hosts` and
//! `/etc/resolv.conf`.
//!
//! Links are driven over rtnetlink. The first Ethernet interface is
//! configured either statically from config, or by a DHCP client (mozim),
//! which keeps running to renew and rebind the lease; a new lease replaces
//! the address, and a lost one removes it and starts over. NTP servers
//! learnt from DHCP are passed to the time module.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::sync::watch;

use crate::config::{Config, NetMode};
use crate::state::Published;

/// How long to wait for the NIC driver to register an interface.
const LINK_WAIT: Duration = Duration::from_secs(20);
/// How long to wait for the carrier after setting the link up.
const CARRIER_WAIT: Duration = Duration::from_secs(5);

/// Runs the network forever (DHCP keeps renewing). Errors are published and
/// retried; this only returns if rtnetlink itself cannot be opened.
pub async fn run(
    cfg: Config,
    published: Published,
    ntp_tx: watch::Sender<Vec<String>>,
) -> anyhow::Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink")?;
    tokio::spawn(conn);

    if let Err(e) = link_up(&handle, 1).await {
        tracing::warn!("cannot bring up lo: {e:#}");
    }
    let hostname = cfg.hostname();
    if let Err(e) = nix::unistd::sethostname(&hostname) {
        tracing::warn!("sethostname {hostname}: {e}");
    }
    write_hosts(&hostname, None);

    let mode_name = match cfg.net_mode() {
        NetMode::Dhcp => "dhcp",
        NetMode::Static(_) => "static",
    };
    published.net(|n| {
        n.mode = mode_name.into();
        n.state = "waiting-for-link".into();
    });

    let Some((ifname, ifindex)) = wait_for_ethernet(LINK_WAIT).await else {
        tracing::error!(
            "no Ethernet interface appeared within {}s; the network stays down",
            LINK_WAIT.as_secs()
        );
        published.net(|n| n.state = "no-link".into());
        return Ok(());
    };
    tracing::info!("network: using {ifname} (index {ifindex}), mode {mode_name}");
    published.net(|n| {
        n.interface = Some(ifname.clone());
        n.state = "configuring".into();
    });
    link_up(&handle, ifindex)
        .await
        .with_context(|| format!("set {ifname} up"))?;
    // A DHCPDISCOVER sent before the carrier is up is lost and only retried
    // seconds later, so give the link a moment.
    if !wait_for_carrier(&ifname, CARRIER_WAIT).await {
        tracing::warn!(
            "network: no carrier on {ifname} after {}s; configuring anyway",
            CARRIER_WAIT.as_secs()
        );
    }

    match cfg.net_mode() {
        NetMode::Static(s) => {
            let dns = cfg.dns();
            apply_address(&handle, ifindex, s.address, s.prefix, s.gateway).await?;
            write_resolv_conf(&dns, None);
            write_hosts(&hostname, Some(s.address));
            tracing::info!(
                "network: static {}/{} gateway {} on {ifname}",
                s.address,
                s.prefix,
                s.gateway
                    .map(|g| g.to_string())
                    .unwrap_or_else(|| "none".into())
            );
            published.net(|n| {
                n.state = "static".into();
                n.address = Some(format!("{}/{}", s.address, s.prefix));
                n.gateway = s.gateway.map(|g| g.to_string());
                n.dns = dns.iter().map(|d| d.to_string()).collect();
            });
            Ok(())
        }
        NetMode::Dhcp => {
            dhcp_loop(&handle, &ifname, ifindex, &cfg, &published, &ntp_tx).await;
            Ok(())
        }
    }
}

async fn dhcp_loop(
    handle: &Handle,
    ifname: &str,
    ifindex: u32,
    cfg: &Config,
    published: &Published,
    ntp_tx: &watch::Sender<Vec<String>>,
) {
    let hostname = cfg.hostname();
    let mut current: Option<Ipv4Addr> = None;
    loop {
        let mut dcfg = mozim::DhcpV4Config::new(ifname);
        dcfg.set_iface_index(ifindex);
        dcfg.set_host_name(&hostname);
        dcfg.use_mac_as_client_id();
        dcfg.set_timeout_sec(60);
        let mut client = match mozim::DhcpV4Client::init(dcfg, None).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("dhcp: cannot start on {ifname}: {e}");
                published.net(|n| n.state = format!("failed: {e}"));
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        published.net(|n| n.state = "discovering".into());
        loop {
            match client.run().await {
                Ok(mozim::DhcpV4State::Done(lease)) => {
                    let addr = lease.yiaddr;
                    let prefix = lease.prefix_length();
                    let gw = lease.gateways.as_ref().and_then(|g| g.first().copied());
                    if current.is_some_and(|c| c != addr) {
                        flush_addresses(handle, ifindex).await;
                    }
                    if let Err(e) = apply_address(handle, ifindex, addr, prefix, gw).await {
                        tracing::error!("dhcp: cannot apply lease {addr}/{prefix}: {e:#}");
                        continue;
                    }
                    let dns: Vec<IpAddr> = if cfg.dns().is_empty() {
                        lease
                            .dns_srvs
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .map(IpAddr::V4)
                            .collect()
                    } else {
                        cfg.dns()
                    };
                    write_resolv_conf(&dns, lease.domain_name.as_deref());
                    write_hosts(&hostname, Some(addr));
                    let ntp: Vec<String> = lease
                        .ntp_srvs
                        .clone()
                        .unwrap_or_default()
                        .iter()
                        .map(|a| a.to_string())
                        .collect();
                    if current != Some(addr) {
                        tracing::info!(
                            "dhcp: leased {addr}/{prefix} on {ifname} from {} for {}s, gateway {}",
                            lease.srv_id,
                            lease.lease_time_sec,
                            gw.map(|g| g.to_string()).unwrap_or_else(|| "none".into())
                        );
                    } else {
                        tracing::info!("dhcp: lease {addr} renewed for {}s", lease.lease_time_sec);
                    }
                    current = Some(addr);
                    published.net(|n| {
                        n.state = "bound".into();
                        n.address = Some(format!("{addr}/{prefix}"));
                        n.gateway = gw.map(|g| g.to_string());
                        n.dns = dns.iter().map(|d| d.to_string()).collect();
                        n.ntp_from_dhcp = ntp.clone();
                        n.lease_seconds = Some(lease.lease_time_sec);
                    });
                    ntp_tx.send_replace(ntp);
                }
                Ok(state) => {
                    tracing::debug!("dhcp: state {state}");
                    if matches!(
                        state,
                        mozim::DhcpV4State::Renewing | mozim::DhcpV4State::Rebinding
                    ) {
                        published.net(|n| n.state = state.to_string());
                    }
                }
                Err(e) => {
                    tracing::warn!("dhcp on {ifname}: {e}; starting over");
                    if current.take().is_some() {
                        flush_addresses(handle, ifindex).await;
                        published.net(|n| {
                            n.address = None;
                            n.gateway = None;
                        });
                    }
                    published.net(|n| n.state = "discovering".into());
                    client.clean_up();
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    break;
                }
            }
        }
    }
}

async fn link_up(handle: &Handle, index: u32) -> anyhow::Result<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context("rtnetlink link set up")
}

async fn apply_address(
    handle: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    gw: Option<Ipv4Addr>,
) -> anyhow::Result<()> {
    handle
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .replace()
        .execute()
        .await
        .with_context(|| format!("add address {addr}/{prefix}"))?;
    if let Some(gw) = gw {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .with_context(|| format!("add default route via {gw}"))?;
    }
    Ok(())
}

async fn flush_addresses(handle: &Handle, index: u32) {
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut msgs = Vec::new();
    while let Ok(Some(a)) = addrs.try_next().await {
        msgs.push(a);
    }
    for m in msgs {
        if let Err(e) = handle.address().del(m).execute().await {
            tracing::warn!("cannot remove an address: {e}");
        }
    }
}

/// Waits for the first Ethernet interface (ARPHRD_ETHER) to appear in sysfs,
/// lowest ifindex first.
async fn wait_for_ethernet(timeout: Duration) -> Option<(String, u32)> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = first_ethernet(Path::new("/sys/class/net")) {
            return Some(found);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_carrier(ifname: &str, timeout: Duration) -> bool {
    let path = Path::new("/sys/class/net").join(ifname).join("carrier");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "1") {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn first_ethernet(dir: &Path) -> Option<(String, u32)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
        // type 1 is ARPHRD_ETHER; lo is type 772.
        if read("type").trim() != "1" {
            continue;
        }
        if let Ok(idx) = read("ifindex").trim().parse::<u32>() {
            found.push((idx, name));
        }
    }
    found.sort();
    found.into_iter().next().map(|(i, n)| (n, i))
}

fn write_resolv_conf(dns: &[IpAddr], domain: Option<&str>) {
    let mut s = String::from("# written by ferry-init\n");
    if let Some(d) = domain {
        s.push_str(&format!("search {d}\n"));
    }
    for d in dns.iter().take(3) {
        s.push_str(&format!("nameserver {d}\n"));
    }
    write_etc("resolv.conf", &s);
}

fn write_hosts(hostname: &str, addr: Option<Ipv4Addr>) {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let mut s = String::from("# written by ferry-init\n127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    match addr {
        Some(a) => s.push_str(&format!("{a}\t{hostname} {short}\n")),
        None => s.push_str(&format!("127.0.1.1\t{hostname} {short}\n")),
    }
    write_etc("hosts", &s);
}

fn write_etc(name: &str, content: &str) {
    let path = Path::new("/etc").join(name);
    let tmp = Path::new("/etc").join(format!(".{name}.tmp"));
    if let Err(e) = std::fs::write(&tmp, content).and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_lowest_ethernet() {
        let dir = tempfile::tempdir().unwrap();
        for (name, ty, idx) in [("lo", "772", "1"), ("eth1", "1", "3"), ("eth0", "1", "2")] {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("type"), ty).unwrap();
            std::fs::write(p.join("ifindex"), idx).unwrap();
        }
        assert_eq!(first_ethernet(dir.path()), Some(("eth0".to_string(), 2)));
    }
}
