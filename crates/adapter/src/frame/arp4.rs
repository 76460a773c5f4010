//! ARP for IPv4 over Ethernet (RFC 826).

use super::*;

// ---------------------------------------------------------------------------
// ARP (RFC 826)

/// Bytes of an ARP packet for IPv4 over Ethernet: 8 + 2 × (6 + 4).
pub const ARP_LEN: usize = 28;
/// ARP hardware type Ethernet (RFC 826, IANA "Hardware Types").
const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;

/// The ARP opcode (RFC 826 `ar$op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ArpOperation {
    Request,
    Reply,
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(v: ArpOperation) -> u16 {
        match v {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// A view of an ARP packet of any hardware and protocol address lengths.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The fixed part and the four addresses its length fields announce
    /// must be there; trailing bytes (Ethernet padding) are allowed.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < 8 {
            return Err(WireError::Truncated);
        }
        if b.len() < self.tpa_range().end {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn hardware_type(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 0)
    }

    pub fn protocol_type(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[4]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[5]
    }

    pub fn operation(&self) -> ArpOperation {
        u16_at(self.buffer.as_ref(), 6).into()
    }

    fn sha_range(&self) -> Range<usize> {
        8..8 + usize::from(self.hardware_len())
    }

    fn spa_range(&self) -> Range<usize> {
        let start = self.sha_range().end;
        start..start + usize::from(self.protocol_len())
    }

    fn tha_range(&self) -> Range<usize> {
        let start = self.spa_range().end;
        start..start + usize::from(self.hardware_len())
    }

    fn tpa_range(&self) -> Range<usize> {
        let start = self.tha_range().end;
        start..start + usize::from(self.protocol_len())
    }

    pub fn source_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.sha_range()]
    }

    pub fn source_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.spa_range()]
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.tha_range()]
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        &self.buffer.as_ref()[self.tpa_range()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, v: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[4] = v;
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[5] = v;
    }

    pub fn set_operation(&mut self, op: ArpOperation) {
        self.buffer.as_mut()[6..8].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    /// The address lengths must be set first; `addr` must be that long.
    pub fn set_source_hardware_addr(&mut self, addr: &[u8]) {
        let r = self.sha_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_source_protocol_addr(&mut self, addr: &[u8]) {
        let r = self.spa_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_target_hardware_addr(&mut self, addr: &[u8]) {
        let r = self.tha_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }

    pub fn set_target_protocol_addr(&mut self, addr: &[u8]) {
        let r = self.tpa_range();
        self.buffer.as_mut()[r].copy_from_slice(addr);
    }
}

/// An ARP packet for IPv4 over Ethernet, the only kind the adapter speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Any other hardware or protocol type, or address lengths other than
    /// 6 and 4, is [`WireError::Unsupported`].
    pub fn parse<T: AsRef<[u8]>>(packet: &ArpPacket<T>) -> Result<Self> {
        packet.check_len()?;
        if packet.hardware_type() != ARP_HTYPE_ETHERNET
            || packet.protocol_type() != ARP_PTYPE_IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(WireError::Unsupported);
        }
        let b = packet.buffer.as_ref();
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: mac_at(b, 8),
            source_protocol_addr: ipv4_at(b, 14),
            target_hardware_addr: mac_at(b, 18),
            target_protocol_addr: ipv4_at(b, 24),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ARP_LEN
    }

    /// Writes the packet; the buffer must hold at least [`ARP_LEN`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(ARP_HTYPE_ETHERNET);
        packet.set_protocol_type(ARP_PTYPE_IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }
}
