//! RFC 2198 redundant audio ("RED", what Chrome sends when offered and SFUs forward): one RTP
//! packet carries the primary encoding and copies of earlier ones. The primary is recorded; a
//! copy fills the place of a packet that was lost.

use bytes::Bytes;

use super::rtp::RtpPacket;

/// Most redundant blocks read from one packet (Chrome sends one or two).
const MAX_BLOCKS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedError {
    #[error("red block headers run past the end of the packet")]
    Truncated,
    #[error("red block lengths run past the end of the packet")]
    BadLength,
    #[error("a red block carries payload type {0}, not the recorded one")]
    OtherPayloadType(u8),
    #[error("more than {MAX_BLOCKS} red blocks")]
    TooManyBlocks,
}

/// A RED packet taken apart: the earlier encodings it repeats (oldest first), each as the packet
/// it stood for (the sequence number counted back from this one, the timestamp by its offset),
/// and the primary one as a packet of `media_payload_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedPayload {
    pub redundant: Vec<RtpPacket>,
    pub primary: RtpPacket,
}

pub fn split(packet: &RtpPacket, media_payload_type: u8) -> Result<RedPayload, RedError> {
    let buf = &packet.payload;
    // Block headers: F=1 (4 bytes: F, PT, 14-bit timestamp offset, 10-bit length), then a last
    // one-byte header (F=0, PT) for the primary, whose length is what remains.
    let mut headers = Vec::new();
    let mut at = 0;
    loop {
        let first = *buf.get(at).ok_or(RedError::Truncated)?;
        let payload_type = first & 0x7f;
        if payload_type != media_payload_type {
            return Err(RedError::OtherPayloadType(payload_type));
        }
        if first & 0x80 == 0 {
            at += 1;
            break;
        }
        let h = buf.get(at..at + 4).ok_or(RedError::Truncated)?;
        let offset = (u32::from(h[1]) << 6) | (u32::from(h[2]) >> 2);
        let length = (usize::from(h[2] & 0x03) << 8) | usize::from(h[3]);
        headers.push((offset, length));
        if headers.len() > MAX_BLOCKS {
            return Err(RedError::TooManyBlocks);
        }
        at += 4;
    }
    let num = headers.len() as u16;
    let mut redundant = Vec::with_capacity(headers.len());
    for (i, (offset, length)) in headers.into_iter().enumerate() {
        let end = at
            .checked_add(length)
            .filter(|e| *e <= buf.len())
            .ok_or(RedError::BadLength)?;
        if length > 0 {
            redundant.push(RtpPacket {
                payload_type: media_payload_type,
                marker: false,
                // Block i of n repeats the packet n - i before this one.
                sequence: packet.sequence.wrapping_sub(num - i as u16),
                timestamp: packet.timestamp.wrapping_sub(offset),
                ssrc: packet.ssrc,
                payload: buf.slice(at..end),
            });
        }
        at = end;
    }
    Ok(RedPayload {
        redundant,
        primary: RtpPacket {
            payload_type: media_payload_type,
            payload: if at <= buf.len() { buf.slice(at..) } else { Bytes::new() },
            ..packet.clone()
        },
    })
}

/// Builds a RED payload of `blocks` (oldest first, each (timestamp offset, bytes)) and the
/// primary `primary`, all of `payload_type`: for tests.
pub fn build(payload_type: u8, blocks: &[(u32, &[u8])], primary: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, data) in blocks {
        out.push(0x80 | payload_type);
        out.push((offset >> 6) as u8);
        out.push((((offset & 0x3f) << 2) as u8) | ((data.len() >> 8) as u8 & 0x03));
        out.push(data.len() as u8);
    }
    out.push(payload_type);
    for (_, data) in blocks {
        out.extend_from_slice(data);
    }
    out.extend_from_slice(primary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn red(sequence: u16, timestamp: u32, payload: Vec<u8>) -> RtpPacket {
        RtpPacket {
            payload_type: 63,
            marker: false,
            sequence,
            timestamp,
            ssrc: 7,
            payload: Bytes::from(payload),
        }
    }

    #[test]
    fn the_primary_and_the_copies_come_back_as_the_packets_they_stood_for() {
        let payload = build(111, &[(1920, b"two back"), (960, b"one back")], b"primary");
        let taken = split(&red(100, 10_000, payload), 111).unwrap();
        assert_eq!(taken.primary.payload_type, 111);
        assert_eq!((taken.primary.sequence, taken.primary.timestamp), (100, 10_000));
        assert_eq!(&taken.primary.payload[..], b"primary");
        let copies: Vec<(u16, u32, &[u8])> = taken
            .redundant
            .iter()
            .map(|p| (p.sequence, p.timestamp, &p.payload[..]))
            .collect();
        assert_eq!(
            copies,
            vec![(98, 8_080, &b"two back"[..]), (99, 9_040, &b"one back"[..])]
        );
        // No redundancy: the primary alone (a one-byte header).
        let alone = split(&red(5, 0, build(111, &[], b"x")), 111).unwrap();
        assert!(alone.redundant.is_empty());
        assert_eq!(&alone.primary.payload[..], b"x");
    }

    #[test]
    fn malformed_red_is_an_error_never_a_panic() {
        assert_eq!(split(&red(1, 0, vec![]), 111), Err(RedError::Truncated));
        assert_eq!(split(&red(1, 0, vec![0x80 | 111, 0]), 111), Err(RedError::Truncated));
        assert_eq!(split(&red(1, 0, vec![0]), 111), Err(RedError::OtherPayloadType(0)));
        // A block longer than what follows.
        assert_eq!(
            split(&red(1, 0, vec![0x80 | 111, 0, 0, 50, 111, 1, 2]), 111),
            Err(RedError::BadLength)
        );
        let block: (u32, &[u8]) = (1, b"a");
        let many = build(111, &[block; 9], b"p");
        assert_eq!(split(&red(1, 0, many), 111), Err(RedError::TooManyBlocks));
        let mut rng = crate::media::testing::SimRng::new(9);
        for _ in 0..5000 {
            let len = (rng.next_u64() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let _ = split(&red(3, 3, bytes), (rng.next_u64() % 128) as u8);
        }
    }
}
