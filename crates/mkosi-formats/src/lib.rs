//! Pure writers and readers for mkosi's outputs: cpio archives, compression
//! and checksums. Nothing here knows about configuration.

pub mod checksum;
pub mod compress;
pub mod cpio;
pub mod deb;
pub mod gpt;
pub mod pcr;
pub mod pe;
pub mod uki;
pub mod verity;
