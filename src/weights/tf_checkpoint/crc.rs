//! CRC32C (Castagnoli) with LevelDB's masking, as used for table blocks and tensor data.
//!
//! Stored checksums are masked so that a CRC of data that itself holds CRCs stays well distributed
//! (tensorflow/core/lib/hash/crc32c.h, leveldb/util/crc32c.h):
//! `mask(c) = rotate_right(c, 15) + 0xa282ead8`, `unmask` is its inverse (32-bit wrapping arithmetic).

const MASK_DELTA: u32 = 0xa282_ead8;

/// CRC32C of `data`.
pub(crate) fn value(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// CRC32C of `data` followed by `more`.
pub(crate) fn extend(crc: u32, more: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, more)
}

/// The masked form of a CRC, as stored in files (the reader only unmasks; writers in tests mask).
#[cfg(test)]
pub(crate) fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// Inverse of `mask` (the masking that TensorFlow applies to the CRCs it stores).
pub(crate) fn unmask(masked: u32) -> u32 {
    masked.wrapping_sub(MASK_DELTA).rotate_left(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // RFC 3720 B.4 test vectors for CRC32C.
        assert_eq!(value(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(value(&[0xffu8; 32]), 0x62a8_ab43);
        assert_eq!(value(b"123456789"), 0xe306_9283);
        assert_eq!(extend(value(b"1234"), b"56789"), value(b"123456789"));
        // The empty string's CRC is 0, and a masked 0 is the delta itself (TF's crc for empty tensors).
        assert_eq!(value(b""), 0);
        assert_eq!(mask(0), MASK_DELTA);
    }

    #[test]
    fn mask_round_trip_and_formula() {
        // ((c >> 15) | (c << 17)) + 0xa282ead8, computed independently.
        assert_eq!(mask(0xe306_9283), 0xc78a_b0e5);
        assert_eq!(mask(0xdead_beef), 0x2062_a833);
        for c in [0u32, 1, 0x8000_0000, 0xdead_beef, u32::MAX, value(b"foo")] {
            assert_eq!(unmask(mask(c)), c);
            // Masking changes the value (leveldb's crc32c_test: Mask(crc) != crc).
            assert_ne!(mask(c), c);
            assert_ne!(mask(mask(c)), mask(c));
        }
    }
}
