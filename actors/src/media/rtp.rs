//! RTP and the little of RTCP the recorder needs (sender reports in, picture-loss indications
//! out), parsed from bytes without trusting them: every length is checked, bad input is an error.

use bytes::Bytes;

/// RTP packets larger than this are refused: a UDP datagram on a typical path is < 1500 bytes, and
/// no WebRTC sender goes past ~1200; anything far larger is garbage or an attack.
pub const MAX_RTP_PACKET: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("packet of {0} bytes is shorter than an rtp header")]
    TooShort(usize),
    #[error("packet of {0} bytes is larger than the {MAX_RTP_PACKET}-byte limit")]
    TooLarge(usize),
    #[error("rtp version {0} is not 2")]
    BadVersion(u8),
    #[error("rtp header fields run past the end of the packet")]
    Truncated,
    #[error("padding of {0} bytes is larger than the payload")]
    BadPadding(usize),
}

/// One RTP packet: the header fields the recorder uses and the payload (padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Bytes,
}

impl RtpPacket {
    pub fn parse(buf: &[u8]) -> Result<RtpPacket, RtpError> {
        Self::parse_bytes(Bytes::copy_from_slice(buf))
    }

    /// Parses without copying the payload.
    pub fn parse_bytes(buf: Bytes) -> Result<RtpPacket, RtpError> {
        if buf.len() > MAX_RTP_PACKET {
            return Err(RtpError::TooLarge(buf.len()));
        }
        if buf.len() < 12 {
            return Err(RtpError::TooShort(buf.len()));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = buf[0] & 0x20 != 0;
        let has_extension = buf[0] & 0x10 != 0;
        let csrc_count = (buf[0] & 0x0f) as usize;
        let marker = buf[1] & 0x80 != 0;
        let payload_type = buf[1] & 0x7f;
        let sequence = u16::from_be_bytes([buf[2], buf[3]]);
        let timestamp = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let mut offset = 12 + 4 * csrc_count;
        if has_extension {
            if buf.len() < offset + 4 {
                return Err(RtpError::Truncated);
            }
            let words = u16::from_be_bytes([buf[offset + 2], buf[offset + 3]]) as usize;
            offset += 4 + 4 * words;
        }
        if offset > buf.len() {
            return Err(RtpError::Truncated);
        }
        let mut end = buf.len();
        if has_padding {
            let padding = buf[end - 1] as usize;
            if padding == 0 || offset + padding > end {
                return Err(RtpError::BadPadding(padding));
            }
            end -= padding;
        }
        Ok(RtpPacket {
            payload_type,
            marker,
            sequence,
            timestamp,
            ssrc,
            payload: buf.slice(offset..end),
        })
    }

    /// Serializes a plain header (no CSRC, no extension) and the payload: for tests and the
    /// load generator.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }
}

/// Whether a datagram on an rtcp-muxed port is RTCP (RFC 5761 §4: packet types 192..=223 sit
/// where RTP would carry marker + payload types 64..=95, which dynamic payloads never use).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// What a sender report says: at NTP time `ntp`, the sender's RTP clock read `rtp_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    /// 64-bit NTP timestamp (seconds since 1900 in the high 32 bits, fraction in the low).
    pub ntp: u64,
    pub rtp_timestamp: u32,
}

/// RTCP packets the recorder reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport(SenderReport),
    /// The sender says goodbye for these sources.
    Bye(Vec<u32>),
}

/// Parses a compound RTCP packet; unknown or malformed parts are skipped, never trusted.
pub fn parse_rtcp(buf: &[u8]) -> Vec<RtcpPacket> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        if rest[0] >> 6 != 2 {
            break;
        }
        let count = (rest[0] & 0x1f) as usize;
        let packet_type = rest[1];
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if len > rest.len() {
            break;
        }
        let body = &rest[..len];
        match packet_type {
            200 if body.len() >= 28 => {
                let word = |at: usize| u32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                out.push(RtcpPacket::SenderReport(SenderReport {
                    ssrc: word(4),
                    ntp: (u64::from(word(8)) << 32) | u64::from(word(12)),
                    rtp_timestamp: word(16),
                }));
            }
            203 => {
                let ssrcs = (0..count)
                    .filter_map(|i| body.get(4 + 4 * i..8 + 4 * i))
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                out.push(RtcpPacket::Bye(ssrcs));
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    out
}

/// A picture loss indication (RFC 4585 §6.3.1): asks the sender of `media_ssrc` for a keyframe.
pub fn picture_loss_indication(sender_ssrc: u32, media_ssrc: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0] = 0x80 | 1; // version 2, FMT 1 = PLI
    out[1] = 206; // payload-specific feedback
    out[2..4].copy_from_slice(&2u16.to_be_bytes()); // length in words minus one
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    out[8..12].copy_from_slice(&media_ssrc.to_be_bytes());
    out
}

/// A full intra request (RFC 5104 §4.3.1): asks the sender of `media_ssrc` for a keyframe, for
/// senders that take no PLI; `sequence` grows by one per new request (a repeat keeps it).
pub fn full_intra_request(sender_ssrc: u32, media_ssrc: u32, sequence: u8) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0] = 0x80 | 4; // version 2, FMT 4 = FIR
    out[1] = 206; // payload-specific feedback
    out[2..4].copy_from_slice(&4u16.to_be_bytes()); // length in words minus one
    out[4..8].copy_from_slice(&sender_ssrc.to_be_bytes());
    // Media source SSRC: unused (0); the FCI names the SSRC instead.
    out[12..16].copy_from_slice(&media_ssrc.to_be_bytes());
    out[16] = sequence;
    out
}

/// A generic NACK (RFC 4585 §6.2.1): asks the sender of `media_ssrc` to send `sequences`
/// again, packed into PID + bitmask entries (each covers a packet and the 16 after it).
pub fn generic_nack(sender_ssrc: u32, media_ssrc: u32, sequences: &[u16]) -> Vec<u8> {
    let mut sorted = sequences.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut entries: Vec<(u16, u16)> = Vec::new();
    for seq in sorted {
        match entries.last_mut() {
            Some((pid, blp)) if seq.wrapping_sub(*pid) >= 1 && seq.wrapping_sub(*pid) <= 16 => {
                *blp |= 1 << (seq.wrapping_sub(*pid) - 1);
            }
            _ => entries.push((seq, 0)),
        }
    }
    let words = 2 + entries.len();
    let mut out = Vec::with_capacity(4 * (words + 1));
    out.push(0x80 | 1); // version 2, FMT 1 = generic NACK
    out.push(205); // transport-layer feedback
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    for (pid, blp) in entries {
        out.extend_from_slice(&pid.to_be_bytes());
        out.extend_from_slice(&blp.to_be_bytes());
    }
    out
}

/// The sequence numbers the generic NACKs of a compound RTCP packet ask for (test senders and
/// the load generator answer them); malformed parts end the walk.
pub fn nacked_sequences(buf: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        let Some(body) = rest.get(..len) else { break };
        if body[1] == 205 && body[0] & 0x1f == 1 {
            for fci in body[12..].chunks_exact(4) {
                let pid = u16::from_be_bytes([fci[0], fci[1]]);
                let blp = u16::from_be_bytes([fci[2], fci[3]]);
                out.push(pid);
                out.extend((0..16).filter(|i| blp & (1 << i) != 0).map(|i| pid.wrapping_add(i + 1)));
            }
        }
        rest = &rest[len..];
    }
    out
}

/// The media SSRCs the PLIs of a compound RTCP packet ask a keyframe of (the load generator
/// answers them as a live encoder would); malformed parts end the walk.
pub fn picture_loss_media_ssrcs(buf: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= 4 {
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        let Some(body) = rest.get(..len) else { break };
        if body[1] == 206 && body[0] & 0x1f == 1 && body.len() >= 12 {
            out.push(u32::from_be_bytes([body[8], body[9], body[10], body[11]]));
        }
        rest = &rest[len..];
    }
    out
}

/// Builds a sender report (for tests and the load generator).
pub fn sender_report_bytes(sr: &SenderReport) -> Vec<u8> {
    let mut out = vec![0x80, 200, 0, 6];
    out.extend_from_slice(&sr.ssrc.to_be_bytes());
    out.extend_from_slice(&sr.ntp.to_be_bytes());
    out.extend_from_slice(&sr.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&[0u8; 8]); // packet and octet counts
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plis_name_their_media_ssrc_and_other_rtcp_is_skipped() {
        let mut compound = sender_report_bytes(&SenderReport {
            ssrc: 9,
            ntp: 0,
            rtp_timestamp: 0,
        });
        compound.extend_from_slice(&picture_loss_indication(7, 1004));
        assert_eq!(picture_loss_media_ssrcs(&compound), vec![1004]);
        assert!(picture_loss_media_ssrcs(&compound[..30]).is_empty());
    }

    fn packet() -> RtpPacket {
        RtpPacket {
            payload_type: 96,
            marker: true,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
            payload: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn a_packet_survives_a_round_trip() {
        let bytes = packet().to_bytes();
        assert_eq!(RtpPacket::parse(&bytes).unwrap(), packet());
    }

    #[test]
    fn csrcs_extensions_and_padding_are_skipped() {
        let mut bytes = vec![0x80 | 0x20 | 0x10 | 2, 96, 0, 1, 0, 0, 0, 9, 0, 0, 0, 7];
        bytes.extend_from_slice(&[1, 1, 1, 1, 2, 2, 2, 2]); // two CSRCs
        bytes.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]); // one-word extension
        bytes.extend_from_slice(b"data");
        bytes.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!((p.sequence, p.timestamp, p.ssrc), (1, 9, 7));
        assert_eq!(&p.payload[..], b"data");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(RtpPacket::parse(&[0x80; 5]), Err(RtpError::TooShort(5)));
        assert_eq!(RtpPacket::parse(&[0x40; 20]), Err(RtpError::BadVersion(1)));
        assert_eq!(RtpPacket::parse(&[0x8f; 20]), Err(RtpError::Truncated));
        assert!(matches!(
            RtpPacket::parse(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 200]),
            Err(RtpError::BadPadding(200))
        ));
        assert!(matches!(
            RtpPacket::parse(&vec![0x80; MAX_RTP_PACKET + 1]),
            Err(RtpError::TooLarge(_))
        ));
        // Every prefix of a valid packet and every single-byte corruption parses or errs cleanly.
        let valid = packet().to_bytes();
        for n in 0..valid.len() {
            let _ = RtpPacket::parse(&valid[..n]);
            for bit in 0..8 {
                let mut bad = valid.clone();
                bad[n] ^= 1 << bit;
                let _ = RtpPacket::parse(&bad);
                let _ = parse_rtcp(&bad);
            }
        }
    }

    #[test]
    fn sender_reports_and_byes_are_read_from_compound_packets() {
        let sr = SenderReport {
            ssrc: 5,
            ntp: 0x1122_3344_5566_7788,
            rtp_timestamp: 42,
        };
        let mut bytes = sender_report_bytes(&sr);
        bytes.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 5]);
        assert_eq!(
            parse_rtcp(&bytes),
            vec![RtcpPacket::SenderReport(sr), RtcpPacket::Bye(vec![5])]
        );
        assert!(is_rtcp(&bytes));
        assert!(!is_rtcp(&packet().to_bytes()));
        // A length field pointing past the end stops parsing.
        assert!(parse_rtcp(&[0x80, 200, 0, 60, 1, 2, 3, 4]).is_empty());
    }

    #[test]
    fn a_generic_nack_packs_its_sequences_and_reads_back() {
        let nack = generic_nack(1, 0xabcd, &[100, 101, 116, 117, 65535, 2]);
        assert_eq!(&nack[..2], &[0x81, 205]);
        assert_eq!(u16::from_be_bytes([nack[2], nack[3]]) as usize, nack.len() / 4 - 1);
        let mut back = nacked_sequences(&nack);
        back.sort_unstable();
        assert_eq!(back, vec![2, 100, 101, 116, 117, 65535]);
        assert!(nacked_sequences(&nack[..7]).is_empty());
    }

    #[test]
    fn a_full_intra_request_names_its_ssrc_and_sequence() {
        let fir = full_intra_request(1, 0xabcd, 7);
        assert_eq!(&fir[..4], &[0x84, 206, 0, 4]);
        assert_eq!(&fir[4..8], &1u32.to_be_bytes());
        assert_eq!(&fir[8..12], &[0; 4]);
        assert_eq!(&fir[12..16], &0xabcdu32.to_be_bytes());
        assert_eq!(fir[16], 7);
        // A PLI reader does not take it for a PLI.
        assert!(picture_loss_media_ssrcs(&fir).is_empty());
    }

    #[test]
    fn a_pli_names_the_media_source() {
        let pli = picture_loss_indication(1, 0xabcd);
        assert_eq!(&pli[..4], &[0x81, 206, 0, 2]);
        assert_eq!(&pli[8..], &0xabcdu32.to_be_bytes());
    }
}
