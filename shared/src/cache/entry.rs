//! What the cache stores: the serialized response body, its gzip form (bodies of
//! 500 bytes or more), its ETag, and the facts XFetch needs (when it expires, how
//! long it took to load) — as one byte frame, so a hit hands the stored bytes to
//! the client without deserializing, serializing or compressing anything.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Frame version; a reader that finds another version treats the entry as a miss.
const VERSION: u8 = 2;

/// Bodies this large or larger are stored compressed too (SPEC §3's threshold).
pub const COMPRESS_MIN_BYTES: usize = 500;

/// One cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 200 for a found resource, 404 for a negative entry.
    pub status: u16,
    /// Strong ETag of `body`, quoted (visible ASCII only, checked when the entry
    /// is made or decoded): a hit hands these bytes to the response as they are.
    pub etag: Bytes,
    /// The serialized JSON body.
    pub body: Bytes,
    /// `body` gzipped, for clients that accept it (absent for small bodies).
    pub gzip: Option<Bytes>,
    /// Unix milliseconds after which the entry is dead (the L2 TTL, jittered).
    pub expires_at_ms: u64,
    /// How long the load took (XFetch's Δ), milliseconds.
    pub delta_ms: u32,
}

impl Entry {
    /// A found resource: computes the ETag once, at load time.
    pub fn found(body: Bytes, expires_at_ms: u64, delta_ms: u32) -> Self {
        Self {
            status: 200,
            etag: Bytes::from(etag_of(&body)),
            body,
            gzip: None,
            expires_at_ms,
            delta_ms,
        }
    }

    /// Adds the gzip form (bodies of [`COMPRESS_MIN_BYTES`] or more) — for entries
    /// that will be stored and served many times, not for one-off answers.
    pub fn with_gzip(mut self) -> Self {
        if self.body.len() >= COMPRESS_MIN_BYTES {
            self.gzip = gzip(&self.body);
        }
        self
    }

    /// A remembered 404.
    pub fn not_found(expires_at_ms: u64, delta_ms: u32) -> Self {
        Self {
            status: 404,
            etag: Bytes::new(),
            body: Bytes::new(),
            gzip: None,
            expires_at_ms,
            delta_ms,
        }
    }

    pub fn is_negative(&self) -> bool {
        self.status == 404
    }

    /// Bytes held in memory, for the L1 weigher.
    pub fn weight(&self) -> u32 {
        let gzip = self.gzip.as_ref().map_or(0, Bytes::len);
        (self.body.len() + gzip + self.etag.len() + 64)
            .try_into()
            .unwrap_or(u32::MAX)
    }

    /// `version | expires_at | delta | status | etag_len | gzip_len | etag | gzip | body`
    pub fn encode(&self) -> Vec<u8> {
        let gzip = self.gzip.as_deref().unwrap_or_default();
        let mut buf = BytesMut::with_capacity(20 + self.etag.len() + gzip.len() + self.body.len());
        buf.put_u8(VERSION);
        buf.put_u64(self.expires_at_ms);
        buf.put_u32(self.delta_ms);
        buf.put_u16(self.status);
        buf.put_u8(self.etag.len() as u8);
        buf.put_u32(gzip.len() as u32);
        buf.put_slice(&self.etag);
        buf.put_slice(gzip);
        buf.put_slice(&self.body);
        buf.to_vec()
    }

    /// Decodes a frame; `None` for anything malformed (treated as a miss).
    pub fn decode(raw: Bytes) -> Option<Self> {
        let mut cur = raw.clone();
        if cur.remaining() < 20 || cur.get_u8() != VERSION {
            return None;
        }
        let expires_at_ms = cur.get_u64();
        let delta_ms = cur.get_u32();
        let status = cur.get_u16();
        let etag_len = cur.get_u8() as usize;
        let gzip_len = cur.get_u32() as usize;
        if cur.remaining() < etag_len + gzip_len {
            return None;
        }
        let etag = cur.copy_to_bytes(etag_len);
        if !etag.iter().all(u8::is_ascii_graphic) {
            return None;
        }
        let at = raw.len() - cur.remaining();
        let gzip = (gzip_len > 0).then(|| raw.slice(at..at + gzip_len));
        let body = raw.slice(at + gzip_len..);
        Some(Self {
            status,
            etag,
            body,
            gzip,
            expires_at_ms,
            delta_ms,
        })
    }
}

thread_local! {
    /// One deflate state per thread, reset for each body: building one costs
    /// more than compressing a 13 KB page at level 1 (miniz allocates and
    /// zeroes its ~300 KB of hash tables and buffers; a third of the gzip time
    /// of every miss in the profile of the 90/10 mix).
    static DEFLATE: std::cell::RefCell<flate2::Compress> =
        std::cell::RefCell::new(flate2::Compress::new(flate2::Compression::fast(), false));
}

/// gzip at level 1; `None` should compression fail (never expected). Every
/// miss pays it: on a 13 KB list page level 6 (the default) costs ~270 µs and
/// level 1 ~90 µs for a body 10 % larger (4,915 against 4,484 bytes), so after
/// each write the next read would otherwise spend more on compression than on
/// PostgreSQL.
///
/// RFC 1952: a gzip member around a raw deflate stream of `body`, made with
/// this thread's reused state.
fn gzip(body: &[u8]) -> Option<Bytes> {
    use flate2::{FlushCompress, Status};
    // Header: magic, deflate, no flags, no mtime, XFL 4 (fastest), OS unknown.
    const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];
    let size = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    out.extend_from_slice(&HEADER);
    DEFLATE.with_borrow_mut(|z| {
        z.reset();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let read = usize::try_from(z.total_in()).ok()?;
            let before = (z.total_in(), z.total_out());
            match z
                .compress_vec(&body[read..], &mut out, FlushCompress::Finish)
                .ok()?
            {
                Status::StreamEnd => return Some(()),
                // Progress, or a full buffer (grown above): go on.
                _ if (z.total_in(), z.total_out()) != before || out.len() == out.capacity() => {}
                _ => return None,
            }
        }
    })?;
    let mut crc = flate2::Crc::new();
    crc.update(body);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    Some(Bytes::from(out))
}

/// A strong ETag: the body's 128-bit XXH3, hex, quoted.
///
/// An ETag only has to change when the body does (RFC 9110 §8.8.3); nothing
/// is secret or signed by it — a client that forged a collision would only
/// confuse its own cache. XXH3 hashes the 13 KB bench page in well under a
/// microsecond; the SHA-256 used before was 8 % of an uncached list's CPU (perf,
/// docs/PERFORMANCE.md). Its output is fixed by the algorithm's specification,
/// so every replica and release gives the same body the same tag.
pub fn etag_of(body: &[u8]) -> String {
    let mut quoted = String::with_capacity(34);
    quoted.push('"');
    quoted.push_str(&hex::encode(
        xxhash_rust::xxh3::xxh3_128(body).to_be_bytes(),
    ));
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_round_trip(body in proptest::collection::vec(any::<u8>(), 0..2048), exp in any::<u64>(), delta in any::<u32>(), negative in any::<bool>()) {
            let e = if negative { Entry::not_found(exp, delta) } else { Entry::found(Bytes::from(body), exp, delta) };
            prop_assert_eq!(Entry::decode(Bytes::from(e.encode())), Some(e));
        }

        #[test]
        fn garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Entry::decode(Bytes::from(raw));
        }
    }

    #[test]
    fn large_bodies_are_stored_gzipped_and_small_ones_are_not() {
        use std::io::Read;
        let big = Bytes::from(format!("[{}]", vec!["\"entry\""; 200].join(",")));
        let e = Entry::found(big.clone(), 1, 1).with_gzip();
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&e.gzip.as_ref().unwrap()[..])
            .read_to_end(&mut unzipped)
            .unwrap();
        assert_eq!(unzipped, big);
        assert!(e.gzip.as_ref().unwrap().len() < big.len() / 4);
        assert!(
            Entry::found(Bytes::from_static(b"{}"), 1, 1)
                .with_gzip()
                .gzip
                .is_none()
        );
        assert_eq!(Entry::decode(Bytes::from(e.encode())), Some(e));
    }

    proptest! {
        /// The reused deflate state leaks nothing from one body into the next:
        /// each gzip form, made one after the other on this thread, unzips (with
        /// CRC and size checked by the decoder) to exactly its own body.
        #[test]
        fn successive_gzips_on_one_thread_each_unzip_to_their_body(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40_000), 1..4)
        ) {
            use std::io::Read;
            for body in bodies {
                let zipped = gzip(&body).unwrap();
                let mut unzipped = Vec::new();
                flate2::read::GzDecoder::new(&zipped[..]).read_to_end(&mut unzipped).unwrap();
                prop_assert_eq!(unzipped, body);
            }
        }
    }

    #[test]
    fn etag_changes_with_the_body() {
        assert_ne!(etag_of(b"{\"a\":1}"), etag_of(b"{\"a\":2}"));
        assert_eq!(etag_of(b"x"), etag_of(b"x"));
        assert!(etag_of(b"x").starts_with('"'));
        // The canonical XXH3-128 of the empty input (as `xxhsum -H2` prints it):
        // a replica of any release tags a body the same way.
        assert_eq!(etag_of(b""), "\"99aa06d3014798d86001c324468d497f\"");
    }
}
