//! General nodes as the NMS hands them to their adapter: the store's
//! records cut into Information Response pages, with a version that
//! changes whenever the adapter's list does.

use std::hash::{Hash, Hasher};

use cyphonic_proto::mac::MacAddr;
use cyphonic_proto::signal::{GeneralNodeInfo, GeneralNodes, GENERAL_NODES_PER_PAGE};

use crate::store::GeneralNodeRecord;

/// The page of `records` (one adapter's, in a stable order) from `offset`.
/// A record whose MAC does not parse (the store only holds parsed ones) is
/// left out rather than sent wrong.
pub fn page(records: &[GeneralNodeRecord], offset: u16) -> GeneralNodes {
    let infos: Vec<GeneralNodeInfo> = records
        .iter()
        .filter_map(|r| {
            let mac: MacAddr = r.mac.parse().ok()?;
            Some(GeneralNodeInfo {
                mac: mac.0,
                fqdn: r.device.fqdn.clone(),
                vip4: r.device.vip4,
                vip6: r.device.vip6,
            })
        })
        .collect();
    let version = version(&infos);
    let start = (offset as usize).min(infos.len());
    let end = (start + GENERAL_NODES_PER_PAGE).min(infos.len());
    GeneralNodes {
        version,
        total: infos.len().min(u16::MAX as usize) as u16,
        offset: start as u16,
        nodes: infos[start..end].to_vec(),
    }
}

/// A digest of the whole list (SipHash with fixed keys: the same list gives
/// the same version in every process and after a restart).
fn version(infos: &[GeneralNodeInfo]) -> u64 {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    for i in infos {
        i.mac.hash(&mut h);
        i.fqdn.hash(&mut h);
        i.vip4.hash(&mut h);
        i.vip6.hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DeviceKind, DeviceRecord};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::SystemTime;

    fn gn(i: u8) -> GeneralNodeRecord {
        GeneralNodeRecord {
            device: DeviceRecord {
                device_id: format!("gn{i}"),
                kind: DeviceKind::General,
                fqdn: format!("gn{i}.cyphonic.internal"),
                vip4: Ipv4Addr::new(100, 64, 1, i),
                vip6: Ipv6Addr::new(0xfd7a, 0x6379, 0x7068, 0, 0, 0, 1, i as u16),
                created_at: SystemTime::UNIX_EPOCH,
                disabled: false,
            },
            adapter_id: "a1".into(),
            mac: format!("02:00:00:00:00:{i:02x}"),
        }
    }

    #[test]
    fn pages_cover_the_list_and_the_version_follows_it() {
        let all: Vec<_> = (1..=6).map(gn).collect();
        let first = page(&all, 0);
        assert_eq!(first.total, 6);
        assert_eq!(first.nodes.len(), GENERAL_NODES_PER_PAGE);
        assert_eq!(first.nodes[0].mac, [2, 0, 0, 0, 0, 1]);
        let second = page(&all, first.nodes.len() as u16);
        assert_eq!(second.nodes.len(), 6 - GENERAL_NODES_PER_PAGE);
        assert_eq!(second.version, first.version);
        let beyond = page(&all, 100);
        assert!(beyond.nodes.is_empty());
        assert_eq!(beyond.offset, 6);
        // Any change of the list changes the version.
        assert_ne!(page(&all[..5], 0).version, first.version);
        let mut moved = all.clone();
        moved[2].device.vip4 = Ipv4Addr::new(100, 64, 2, 3);
        assert_ne!(page(&moved, 0).version, first.version);
        assert_eq!(page(&all.clone(), 0).version, first.version);
        assert_eq!(page(&[], 0).total, 0);
    }
}
