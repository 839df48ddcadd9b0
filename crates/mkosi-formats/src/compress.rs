//! Output compression (zstd multi-threaded, xz, gzip), reproducible: the
//! same input and level give the same bytes on every machine.

use std::io::{self, Write};

/// A compression algorithm mkosi can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    None,
    Zstd,
    Xz,
    Gz,
}

impl Algorithm {
    /// Map upstream's `CompressOutput=` value; algorithms upstream accepts but
    /// cannot write (bz2, lz4, lzma) are rejected.
    pub fn from_setting(value: &str) -> Result<Algorithm, String> {
        match value {
            "none" => Ok(Algorithm::None),
            "zstd" | "zst" => Ok(Algorithm::Zstd),
            "xz" => Ok(Algorithm::Xz),
            "gz" | "gzip" => Ok(Algorithm::Gz),
            other => Err(format!("Compression {other} is not supported")),
        }
    }
}

/// A writer compressing into `W`. Call [`Compressor::finish`] to write the trailer.
pub enum Compressor<W: Write> {
    None(W),
    Zstd(zstd::Encoder<'static, W>),
    Xz(xz2::write::XzEncoder<W>),
    Gz(flate2::write::GzEncoder<W>),
}

impl<W: Write> Compressor<W> {
    /// `level` is the `CompressLevel=` value (clamped to what the algorithm supports).
    pub fn new(inner: W, algorithm: Algorithm, level: i32) -> io::Result<Compressor<W>> {
        Ok(match algorithm {
            Algorithm::None => Compressor::None(inner),
            Algorithm::Zstd => {
                let mut enc = zstd::Encoder::new(inner, level.clamp(1, 19))?;
                // Always use at least one worker: the output then does not
                // depend on how many CPUs the machine has.
                let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
                enc.multithread(threads as u32)?;
                enc.include_checksum(true)?;
                Compressor::Zstd(enc)
            }
            Algorithm::Xz => {
                let stream = xz2::stream::Stream::new_easy_encoder(level.clamp(0, 9) as u32, xz2::stream::Check::Crc64)
                    .map_err(io::Error::other)?;
                Compressor::Xz(xz2::write::XzEncoder::new_stream(inner, stream))
            }
            Algorithm::Gz => Compressor::Gz(
                flate2::GzBuilder::new().mtime(0).write(inner, flate2::Compression::new(level.clamp(1, 9) as u32)),
            ),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Zstd(e) => e.finish(),
            Compressor::Xz(e) => e.finish(),
            Compressor::Gz(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Xz(e) => e.write(buf),
            Compressor::Gz(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Zstd(e) => e.flush(),
            Compressor::Xz(e) => e.flush(),
            Compressor::Gz(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn compress(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new(Vec::new(), alg, 3).unwrap();
        c.write_all(data).unwrap();
        c.finish().unwrap()
    }

    #[test]
    fn round_trips_and_is_reproducible() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for alg in [Algorithm::None, Algorithm::Zstd, Algorithm::Xz, Algorithm::Gz] {
            let a = compress(alg, &data);
            assert_eq!(a, compress(alg, &data), "{alg:?} not reproducible");
            let mut out = Vec::new();
            match alg {
                Algorithm::None => out = a.clone(),
                Algorithm::Zstd => {
                    zstd::Decoder::new(&a[..]).unwrap().read_to_end(&mut out).unwrap();
                }
                Algorithm::Xz => {
                    xz2::read::XzDecoder::new(&a[..]).read_to_end(&mut out).unwrap();
                }
                Algorithm::Gz => {
                    flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut out).unwrap();
                }
            }
            assert_eq!(out, data, "{alg:?}");
        }
    }

    #[test]
    fn setting_names() {
        assert_eq!(Algorithm::from_setting("zstd"), Ok(Algorithm::Zstd));
        assert_eq!(Algorithm::from_setting("gz"), Ok(Algorithm::Gz));
        assert!(Algorithm::from_setting("lz4").is_err());
    }
}
