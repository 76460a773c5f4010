//! Link-layer (Ethernet) addresses: how a general node is known on its
//! adapter's LAN.

/// A link-layer (Ethernet) address.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl std::fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

/// `aa:bb:cc:dd:ee:ff` (or with `-`), case-insensitive.
impl std::str::FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(BadMac(s.to_owned()));
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(BadMac(s.to_owned()));
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| BadMac(s.to_owned()))?;
        }
        Ok(MacAddr(m))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_print_and_refuse_junk() {
        let m: MacAddr = "02:00:5E:10:00:01".parse().expect("mac");
        assert_eq!(m.to_string(), "02:00:5e:10:00:01");
        assert_eq!("02-00-5e-10-00-01".parse::<MacAddr>(), Ok(m));
        assert!(!m.is_multicast());
        assert!(MacAddr::BROADCAST.is_multicast());
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0g",
            "0200:5e:10:00:01:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }
}
