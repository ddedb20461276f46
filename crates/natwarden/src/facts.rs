//! Reads, over rtnetlink, the kernel facts that config validation needs: the named
//! interfaces, their IPv4 addresses, and where the default route goes.

use anyhow::Context;
use natwarden_core::{Ipv4Net, Ipv6Net};
use natwarden_kernel::rtnl;

use crate::config::{FileConfig, InterfaceFacts, SystemFacts};

/// Facts about every interface the config names (missing ones are simply absent).
pub fn gather(cfg: &FileConfig) -> anyhow::Result<SystemFacts> {
    let addrs = rtnl::ipv4_addresses().context("reading interface addresses over rtnetlink")?;
    let addrs6 = rtnl::ipv6_addresses().context("reading IPv6 addresses over rtnetlink")?;
    let mut interfaces = Vec::new();
    let names = std::iter::once(&cfg.interfaces.external).chain(cfg.interfaces.internal.iter());
    for name in names {
        if interfaces.iter().any(|i: &InterfaceFacts| &i.name == name) {
            continue;
        }
        let Some(index) = rtnl::interface_index(name)
            .with_context(|| format!("looking up interface {name} over rtnetlink"))?
        else {
            continue;
        };
        let addresses = addrs
            .iter()
            .filter(|a| a.index == index)
            .filter_map(|a| Ipv4Net::new(a.address, a.prefix_len))
            .collect();
        let addresses6 = addrs6
            .iter()
            .filter(|a| a.index == index)
            .filter_map(|a| Ipv6Net::new(a.address, a.prefix_len))
            .collect();
        interfaces.push(InterfaceFacts {
            name: name.clone(),
            index,
            addresses,
            addresses6,
        });
    }
    let default_route_interfaces =
        rtnl::default_route_interfaces().context("reading the default route over rtnetlink")?;
    Ok(SystemFacts {
        interfaces,
        default_route_interfaces,
    })
}
