//! Reading datagrams: a batch at a time (`recvmmsg`), each with its source and the time it
//! arrived (the kernel's `SO_TIMESTAMPNS` stamp), for the receive pool's threads.

use std::time::{Duration, Instant};

use super::rtp::MAX_RTP_PACKET;

/// Asks the kernel to stamp every datagram with its arrival time (`SO_TIMESTAMPNS`).
/// Linux turns receive timestamps on machine-wide from a deferred work item when the first
/// socket of the machine asks for them, and off again (deferred too) when the last one closes:
/// a datagram that arrives in between is stamped when it is read, up to a round late. One
/// socket with the option, held for the life of the process from the pool's creation, keeps
/// them on, so the first session of a node and every one after it get arrival times.
pub(super) fn keep_arrival_stamps_on() {
    static KEEPER: std::sync::OnceLock<Option<std::net::UdpSocket>> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| {
        let kept = std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .and_then(|socket| enable_arrival_stamps(&socket).map(|()| socket));
        match kept {
            Ok(socket) => Some(socket),
            Err(err) => {
                tracing::warn!(error = %err, "receive timestamps not held on; early datagrams may be stamped when read");
                None
            }
        }
    });
}

pub(super) fn enable_arrival_stamps(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Datagrams one `recvmmsg` reads at most from one socket. A round finds a few per socket (an
/// A/V stream sends ~150 packets a second, a round is 40 ms), so one call usually empties it.
pub(super) const RECV_BATCH: usize = 16;
/// Room per datagram: one byte more than the limit, to tell an oversized datagram from one
/// exactly at it.
pub(super) const SLOT: usize = MAX_RTP_PACKET + 1;

/// What one `recvmmsg` read: each datagram, its source and its arrival (the kernel's stamp when
/// the socket has them, on the monotonic clock: now minus how long ago the stamp was; else the
/// read time). The buffers belong to a receive thread and serve every socket it reads.
pub(super) struct RecvBatch {
    pub(super) bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    controls: Vec<[u64; 8]>,
    headers: Vec<libc::mmsghdr>,
    got: Vec<(usize, std::net::SocketAddr, Instant)>,
}

impl RecvBatch {
    pub(super) fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![0; RECV_BATCH * SLOT],
            // SAFETY: plain C structs for which all-zero is a valid value.
            addrs: (0..RECV_BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            iovs: (0..RECV_BATCH)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            controls: vec![[0; 8]; RECV_BATCH],
            // SAFETY: as above.
            headers: (0..RECV_BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            got: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Reads what `socket` holds, up to [`RECV_BATCH`] datagrams, without waiting: how many
    /// (fewer than the batch: the socket is empty), or `WouldBlock` when it held none.
    pub(super) fn recv(&mut self, socket: &mio::net::UdpSocket) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.got.clear();
        for i in 0..RECV_BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT..].as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT,
            };
            let msg = &mut self.headers[i].msg_hdr;
            msg.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_iov = &mut self.iovs[i];
            msg.msg_iovlen = 1;
            msg.msg_control = self.controls[i].as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = std::mem::size_of::<[u64; 8]>() as _;
            msg.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every pointer in `headers` points into this batch's own buffers, which outlive
        // the call and are not moved during it; the control buffers are u64-aligned as cmsghdr
        // needs.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let now = Instant::now();
        let wall_now = std::time::SystemTime::now();
        for i in 0..n as usize {
            let header = &self.headers[i];
            // SAFETY: the kernel filled this header's control buffer and address for datagram i.
            let (arrived, from) = unsafe { (arrival(&header.msg_hdr, now, wall_now), source(&self.addrs[i])) };
            match from {
                Some(from) => self.got.push((header.msg_len as usize, from, arrived)),
                None => tracing::debug!("a datagram from a non-IP address ignored"),
            }
        }
        Ok(n as usize)
    }

    /// The datagrams of the last [`RecvBatch::recv`].
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (&[u8], std::net::SocketAddr, Instant)> + '_ {
        self.got
            .iter()
            .enumerate()
            .map(|(i, (len, from, at))| (&self.bufs[i * SLOT..i * SLOT + (*len).min(SLOT)], *from, *at))
    }
}

/// The arrival of a datagram: its `SCM_TIMESTAMPNS` stamp moved onto the monotonic clock, or
/// `now` without one.
///
/// # Safety
/// `msg` is a header `recvmsg`/`recvmmsg` filled, its control buffer still alive.
unsafe fn arrival(msg: &libc::msghdr, now: Instant, wall_now: std::time::SystemTime) -> Instant {
    let mut arrived = now;
    let mut cmsg = libc::CMSG_FIRSTHDR(msg);
    while !cmsg.is_null() {
        if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
            let stamp = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
            let stamp = std::time::UNIX_EPOCH
                + Duration::new(stamp.tv_sec.max(0) as u64, stamp.tv_nsec.clamp(0, 999_999_999) as u32);
            if let Ok(age) = wall_now.duration_since(stamp) {
                // A stamp from the future (the wall clock stepped) is no better than now.
                arrived = now.checked_sub(age.min(Duration::from_secs(5))).unwrap_or(now);
            }
        }
        cmsg = libc::CMSG_NXTHDR(msg, cmsg);
    }
    arrived
}

/// The source address the kernel wrote, if it is IPv4 or IPv6.
///
/// # Safety
/// `addr` was filled by the kernel as a datagram's source (its family tells its layout).
unsafe fn source(addr: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            let v4 = &*(addr as *const _ as *const libc::sockaddr_in);
            Some(std::net::SocketAddrV4::new(u32::from_be(v4.sin_addr.s_addr).into(), u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 => {
            let v6 = &*(addr as *const _ as *const libc::sockaddr_in6);
            Some(
                std::net::SocketAddrV6::new(
                    v6.sin6_addr.s6_addr.into(),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_timeout(e: &std::io::Error) -> bool {
        matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    }

    #[test]
    fn a_datagram_read_late_keeps_the_time_it_arrived() {
        keep_arrival_stamps_on();
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_arrival_stamps(&receiver).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let receiver = mio::net::UdpSocket::from_std(receiver);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        let mut recv_one = || {
            assert_eq!(batch.recv(&receiver).unwrap(), 1);
            let (data, from, arrived) = batch.datagrams().next().unwrap();
            (data.to_vec(), from, arrived)
        };
        // The kernel turns receive timestamps on for the whole machine from a deferred work item
        // the first time a socket asks; until it has run, a datagram is stamped when it is read.
        // Wait for that (a datagram read 30 ms late must keep its earlier time), as a long-lived
        // node does once at its first session.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let probe_at = Instant::now();
            sender.send_to(b"probe", receiver.local_addr().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            let (_, _, arrived) = recv_one();
            if arrived < probe_at + Duration::from_millis(20) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the kernel never stamped a datagram on arrival"
            );
        }
        let sent_at = Instant::now();
        sender.send_to(b"rtp", receiver.local_addr().unwrap()).unwrap();
        // A round reads it 120 ms later.
        std::thread::sleep(Duration::from_millis(120));
        let read_at = Instant::now();
        let (data, from, arrived) = recv_one();
        assert_eq!((&data[..], from), (&b"rtp"[..], sender.local_addr().unwrap()));
        assert!(
            arrived < sent_at + Duration::from_millis(50),
            "arrived {:?} after sending, read {:?} after",
            arrived - sent_at,
            read_at - sent_at
        );
        assert!(arrived + Duration::from_millis(5) >= sent_at, "not before it was sent");
    }

    #[test]
    fn a_batch_reads_every_datagram_a_socket_holds_in_order_with_its_source() {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_nonblocking(true).unwrap();
        let receiver = mio::net::UdpSocket::from_std(receiver);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = RecvBatch::new();
        assert!(
            is_timeout(&batch.recv(&receiver).unwrap_err()),
            "an empty socket would block"
        );
        let count = RECV_BATCH + 5;
        for i in 0..count {
            let size = if i == 3 { MAX_RTP_PACKET + 100 } else { 10 + i };
            sender
                .send_to(&vec![i as u8; size], receiver.local_addr().unwrap())
                .unwrap();
        }
        let mut seen = Vec::new();
        loop {
            let n = batch.recv(&receiver).unwrap();
            for (data, from, _) in batch.datagrams() {
                assert_eq!(from, sender.local_addr().unwrap());
                seen.push(data.to_vec());
            }
            if n < RECV_BATCH {
                break;
            }
        }
        assert_eq!(seen.len(), count);
        for (i, data) in seen.iter().enumerate() {
            // An oversized datagram is cut one byte past the limit, so it is told apart.
            let len = if i == 3 { MAX_RTP_PACKET + 1 } else { 10 + i };
            assert_eq!(data, &vec![i as u8; len], "datagram {i}");
        }
    }
}
