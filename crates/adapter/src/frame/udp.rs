//! UDP (RFC 768; its checksum over IPv6, RFC 8200 §8.1).

use super::*;

// ---------------------------------------------------------------------------
// UDP (RFC 768)

pub const UDP_HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// The length field covers at least the header and at most the buffer.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < UDP_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let field = usize::from(self.length());
        if field < UDP_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if len < field {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 0)
    }

    pub fn dst_port(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 2)
    }

    /// The Length field: header and payload (RFC 768).
    pub fn length(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 4)
    }

    pub fn checksum(&self) -> u16 {
        u16_at(self.buffer.as_ref(), 6)
    }

    /// Whether the checksum over the pseudo-header (RFC 768; RFC 8200 §8.1
    /// for IPv6), header and payload is right. A zero field is not
    /// special here; see [`UdpRepr::parse`].
    pub fn verify_checksum(&self, src: IpAddr, dst: IpAddr) -> bool {
        let len = usize::from(self.length());
        let acc = checksum::pseudo_header(src, dst, IpProtocol::Udp.into(), len)
            + checksum::sum(&self.buffer.as_ref()[..len]);
        checksum::verifies(acc)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[UDP_HEADER_LEN..usize::from(self.length())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[0..2].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[2..4].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_length(&mut self, v: u16) {
        self.buffer.as_mut()[4..6].copy_from_slice(&v.to_be_bytes());
    }

    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[6..8].copy_from_slice(&v.to_be_bytes());
    }

    /// Computes the checksum over the datagram as its length field says.
    /// A result of zero is sent as all ones, zero meaning "no checksum"
    /// (RFC 768 "Fields"; RFC 8200 §8.1).
    pub fn fill_checksum(&mut self, src: IpAddr, dst: IpAddr) {
        self.set_checksum(0);
        let len = usize::from(self.length());
        let acc = checksum::pseudo_header(src, dst, IpProtocol::Udp.into(), len)
            + checksum::sum(&self.buffer.as_ref()[..len]);
        let sum = match checksum::finish(acc) {
            0 => 0xffff,
            sum => sum,
        };
        self.set_checksum(sum);
    }
}

/// A UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Checks the checksum: over IPv4 a zero field means the sender did
    /// not compute one (RFC 768); over IPv6 it is mandatory and a zero
    /// field is an error (RFC 8200 §8.1).
    pub fn parse<T: AsRef<[u8]>>(packet: &UdpPacket<T>, src: IpAddr, dst: IpAddr) -> Result<Self> {
        packet.check_len()?;
        let ok = match (packet.checksum(), dst) {
            (0, IpAddr::V4(_)) => true,
            (0, IpAddr::V6(_)) => false,
            _ => packet.verify_checksum(src, dst),
        };
        if !ok {
            return Err(WireError::Checksum);
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
        })
    }

    pub const fn header_len(&self) -> usize {
        UDP_HEADER_LEN
    }

    /// Writes the header, `payload` and the checksum. The buffer must hold
    /// exactly `8 + payload.len()` bytes, at most 65 535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut UdpPacket<T>,
        src: IpAddr,
        dst: IpAddr,
        payload: &[u8],
    ) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_length((UDP_HEADER_LEN + payload.len()) as u16);
        packet.buffer.as_mut()[UDP_HEADER_LEN..UDP_HEADER_LEN + payload.len()]
            .copy_from_slice(payload);
        packet.fill_checksum(src, dst);
    }
}
