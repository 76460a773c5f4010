//! Just enough of the pcap format to pull UDP payloads out of a capture
//! (tcpdump's classic format, Ethernet, Linux cooked or raw IP links).

/// (source port, destination port, payload) of every UDP datagram to or
/// from `port`. Unparseable records are skipped.
pub fn udp_payloads(pcap: &[u8], port: u16) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    if pcap.len() < 24 {
        return out;
    }
    let le = match pcap[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return out,
    };
    let u32_at = |b: &[u8], i: usize| -> Option<u32> {
        let a: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let Some(linktype) = u32_at(pcap, 20) else {
        return out;
    };
    let mut off = 24;
    while let Some(incl) = u32_at(pcap, off + 8) {
        let start = off + 16;
        let end = start + incl as usize;
        let Some(frame) = pcap.get(start..end) else {
            break;
        };
        off = end;
        let ip = match linktype {
            1 if frame.len() > 14 => match u16::from_be_bytes([frame[12], frame[13]]) {
                0x0800 | 0x86dd => &frame[14..],
                _ => continue,
            },
            113 if frame.len() > 16 => &frame[16..],
            101 | 12 | 228 | 229 => frame,
            _ => continue,
        };
        if let Some(d) = udp(ip) {
            if d.0 == port || d.1 == port {
                out.push((d.0, d.1, d.2.to_vec()));
            }
        }
    }
    out
}

fn udp(ip: &[u8]) -> Option<(u16, u16, &[u8])> {
    let (proto, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = (*ip.first()? & 0x0f) as usize * 4;
            (*ip.get(9)?, ip.get(ihl..)?)
        }
        6 => (*ip.get(6)?, ip.get(40..)?),
        _ => return None,
    };
    if proto != 17 || l4.len() < 8 {
        return None;
    }
    let sport = u16::from_be_bytes([l4[0], l4[1]]);
    let dport = u16::from_be_bytes([l4[2], l4[3]]);
    let len = u16::from_be_bytes([l4[4], l4[5]]) as usize;
    Some((sport, dport, l4.get(8..len.max(8).min(l4.len()))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_udp_datagram_from_an_ethernet_capture() {
        let mut pcap = vec![
            0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0,
            0,
        ];
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let payload = b"hello";
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
        ];
        ip.extend_from_slice(&[0x11, 0x95, 0x11, 0x95, 0, 13, 0, 0]);
        ip.extend_from_slice(payload);
        frame.extend_from_slice(&ip);
        let len = frame.len() as u32;
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&len.to_le_bytes());
        pcap.extend_from_slice(&len.to_le_bytes());
        pcap.extend_from_slice(&frame);
        let got = udp_payloads(&pcap, 4501);
        assert_eq!(got, vec![(4501, 4501, payload.to_vec())]);
        assert!(udp_payloads(&pcap, 53).is_empty());
        assert!(udp_payloads(&pcap[..30], 4501).is_empty());
    }
}
