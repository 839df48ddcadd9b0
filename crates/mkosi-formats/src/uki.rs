//! Assembling unified kernel images (UKIs) and PE addons without ukify.
//!
//! The result is what `ukify build` (systemd 257) writes for the same inputs,
//! byte for byte when no signing is involved:
//!
//! - The stub's symbol table is dropped when it sits at the end of the file,
//!   the stub's sections are padded to `FileAlignment` and `SizeOfHeaders` is
//!   rounded up to `FileAlignment`. A signed stub is refused.
//! - New sections follow in ukify's order: (`.profile` first for a profile
//!   binary,) `.osrel .cmdline .dtb .dtbauto… .hwids .uname .splash .pcrpkey
//!   .linux .initrd .ucode`, extra sections, `.sbat` (not for profile
//!   binaries), the base `.profile` when profiles are joined, `.pcrsig`, and
//!   then the sections of each joined profile. Each section starts at the next
//!   `SectionAlignment` boundary after the previous one in memory and at the
//!   next `FileAlignment` boundary in the file; its virtual size is the exact
//!   content length and its raw size is padded to `FileAlignment`.
//! - A section the stub already has (in practice `.sbat`) is overwritten in
//!   place instead of appended; it must fit in the stub's raw size.
//! - `NumberOfSections`, `SizeOfInitializedData` (increased by the virtual size
//!   of every appended section, `.linux` included, exactly like ukify; `SizeOfCode`
//!   is left alone), `SizeOfImage` are updated, `CheckSum` is set to 0, and
//!   `NX_COMPAT` is cleared when the kernel does not have it.
//! - `.sbat` is the stub's and the kernel's SBAT entries plus the given SBAT
//!   text (by default the generic `uki` entry), behind a single `sbat,1` header
//!   line and terminated by a newline and a NUL.
//! - Section content is copied verbatim: ukify writes `.cmdline`, `.osrel`,
//!   `.uname` and `.profile` without adding a NUL (mkosi itself puts a NUL at
//!   the end of the command line, see [`cmdline_text`]). A single initrd is
//!   used as is; several are concatenated, each padded to 4 bytes.
//!
//! Known differences from ukify: ukify refuses stubs that make its PE library
//! warn and checks splash images with PIL; neither is done here. Without an
//! os-release text ukify falls back to the host's `/etc/os-release`; here there
//! is simply no `.osrel` (mkosi always passes the image's). ukify collapses
//! whitespace in a `--cmdline` given as an argument (not as `@file`); here the
//! text is always taken verbatim, like `@file`. SBAT text is split into lines
//! at `\n` (and `\r\n`) only, where Python also splits at other line breaks. A kernel that
//! is not a PE image is decompressed like ukify does for gzip, zstd, xz/lzma and
//! zboot images (not lz4, bzip2 or lzo). When no kernel version is given it is
//! read from the x86 boot header or from the `Linux version` banner, but not
//! from ELF notes.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::pe::{
    self, OptionalField, PeFile, DLL_NX_COMPAT, FILE_LOCAL_SYMS_STRIPPED, SCN_CNT_CODE, SCN_CNT_INITIALIZED_DATA,
    SCN_MEM_READ, SECTION_HEADER_SIZE,
};

/// Errors from assembling UKIs.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Pe { path: PathBuf, source: pe::PeError },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = UkiError> = std::result::Result<T, E>;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UkiError {
    let path = path.to_path_buf();
    move |source| UkiError::Io { what, path, source }
}

fn invalid(msg: impl Into<String>) -> UkiError {
    UkiError::Invalid(msg.into())
}

/// The SBAT entry ukify adds to UKIs when no SBAT text is given.
pub const STUB_SBAT: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n";

/// The SBAT entry ukify adds to PE addons when no SBAT text is given.
pub const ADDON_SBAT: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n\
uki-addon,1,UKI Addon,addon,1,https://www.freedesktop.org/software/systemd/man/latest/systemd-stub.html\n";

const SBAT_HEADER: &str = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n";

/// What goes into a UKI, a PE addon or a UKI profile binary. Text fields are
/// copied verbatim (`None` or empty: no section).
#[derive(Debug, Clone, Default)]
pub struct UkiInput {
    /// `linux<arch>.efi.stub` for UKIs, `addon<arch>.efi.stub` for addons and profiles.
    pub stub: PathBuf,
    /// The kernel (`.linux`); without it the result is a PE addon.
    pub linux: Option<PathBuf>,
    /// Initrds, concatenated into `.initrd`.
    pub initrds: Vec<PathBuf>,
    /// The microcode initrd (`.ucode`).
    pub microcode: Option<PathBuf>,
    /// `.cmdline` (see [`cmdline_text`]).
    pub cmdline: Option<String>,
    /// `.osrel`: the content of an os-release file.
    pub os_release: Option<String>,
    /// `.uname`; read from the kernel when `None` and a kernel is given.
    pub uname: Option<String>,
    /// `.splash`: a BMP image.
    pub splash: Option<PathBuf>,
    /// `.dtb`.
    pub devicetree: Option<PathBuf>,
    /// `.dtbauto` sections, one per file.
    pub devicetree_auto: Vec<PathBuf>,
    /// `.hwids`: an already packed hardware id table.
    pub hwids: Option<Vec<u8>>,
    /// `.pcrpkey`: the public key (PEM) for signed PCR policies.
    pub pcrpkey: Option<Vec<u8>>,
    /// `.pcrsig`: signed PCR policies (JSON) of the base profile.
    pub pcrsig: Option<Vec<u8>>,
    /// `.profile` text (`ID=…` lines). With profiles to join it defaults to `ID=main`.
    pub profile: Option<String>,
    /// Already built profile binaries ([`build_profile`]) to append.
    pub join_profiles: Vec<PathBuf>,
    /// SBAT text (each starting with an `sbat,` line); empty for ukify's default.
    pub sbat: Vec<String>,
    /// More sections (name, content), added after the standard ones.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// The `.cmdline` content mkosi hands to ukify: the words joined by spaces and
/// a terminating NUL (older stubs expect it).
pub fn cmdline_text(words: &[String]) -> String {
    format!("{}\0", words.join(" "))
}

/// The `.profile` text mkosi writes for a `[UKIProfile]` `Profile=` map: one
/// `KEY=VALUE` line each, the value in double quotes unless it is alphanumeric.
pub fn profile_text(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in fields {
        if v.chars().all(char::is_alphanumeric) {
            out.push_str(&format!("{k}={v}\n"));
        } else {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    out
}

fn round_up(x: usize, align: usize) -> usize {
    if align == 0 {
        x
    } else {
        x.div_ceil(align) * align
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(io("reading", path))
}

/// A section to add: name and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSection {
    pub name: String,
    pub data: Vec<u8>,
}

fn check_name(name: &str) -> Result<()> {
    if !name.chars().all(|c| c.is_ascii_graphic()) || name.is_empty() {
        return Err(invalid(format!("Bad section name: {name:?}")));
    }
    if name.len() > 8 {
        return Err(invalid(format!("Section name too long: {name:?}")));
    }
    Ok(())
}

/// The list of sections, refusing duplicates after the last `.profile` like ukify.
#[derive(Debug, Default)]
struct Sections(Vec<NewSection>);

impl Sections {
    fn add(&mut self, name: &str, data: Vec<u8>) -> Result<()> {
        let start = self.0.iter().rposition(|s| s.name == ".profile").map_or(0, |i| i + 1);
        if name != ".dtbauto" && self.0[start..].iter().any(|s| s.name == name) {
            return Err(invalid(format!("Duplicate section {name}")));
        }
        self.0.push(NewSection { name: name.to_string(), data });
        Ok(())
    }
}

/// Merge SBAT data: the entries (all but the `sbat,` header line) of the `.sbat`
/// sections of `pes` and of `texts`, behind one header line. PE files that do
/// not parse or have no valid `.sbat` are skipped, as are texts not starting
/// with an `sbat,` line.
pub fn merge_sbat(pes: &[&[u8]], texts: &[String]) -> String {
    let mut entries: Vec<String> = Vec::new();
    for data in pes {
        let Ok(pe) = PeFile::parse(data) else { continue };
        for s in pe.sections.iter().filter(|s| s.name == ".sbat") {
            let raw = pe.section_raw_data(data, s);
            let end = raw.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            let text = String::from_utf8_lossy(&raw[..end]);
            let lines: Vec<&str> = text.lines().collect();
            if lines.first().is_some_and(|l| l.starts_with("sbat,")) {
                entries.extend(lines[1..].iter().map(|l| l.to_string()));
            }
        }
    }
    for t in texts {
        let lines: Vec<&str> = t.lines().collect();
        if lines.first().is_some_and(|l| l.starts_with("sbat,")) {
            entries.extend(lines[1..].iter().map(|l| l.to_string()));
        }
    }
    format!("{SBAT_HEADER}{}\n\0", entries.join("\n"))
}

/// Concatenate initrds: a single one is taken as is, several are each padded
/// to a multiple of 4 bytes.
pub fn join_initrds(initrds: &[PathBuf]) -> Result<Option<Vec<u8>>> {
    match initrds {
        [] => Ok(None),
        [one] => Ok(Some(read(one)?)),
        many => {
            let mut out = Vec::new();
            for p in many {
                out.extend_from_slice(&read(p)?);
                out.resize(round_up(out.len(), 4), 0);
            }
            Ok(Some(out))
        }
    }
}

fn decompress_with(mut r: impl Read, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| invalid(format!("Decompressing the {what} kernel: {e}")))?;
    Ok(out)
}

fn xz_auto(data: &[u8]) -> Result<Vec<u8>> {
    let stream = xz2::stream::Stream::new_auto_decoder(u64::MAX, 0)
        .map_err(|e| invalid(format!("Setting up the lzma decoder: {e}")))?;
    decompress_with(xz2::read::XzDecoder::new_stream(data, stream), "lzma")
}

/// The uncompressed kernel when `data` is a compressed kernel image that is not
/// a PE file (gzip, zstd, xz/lzma, or an EFI zboot image with one of those);
/// `Ok(None)` when the format is not one of them.
pub fn maybe_decompress(data: &[u8]) -> Result<Option<Vec<u8>>> {
    if data.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    if data.starts_with(b"MZ") {
        if data.get(4..8) != Some(b"zimg".as_slice()) {
            return Ok(None);
        }
        let start = pe::u32_at(data, 8).ok_or_else(|| invalid("truncated zboot header"))? as usize;
        let size = pe::u32_at(data, 0xc).ok_or_else(|| invalid("truncated zboot header"))? as usize;
        let comp = data.get(0x18..0x1e).unwrap_or_default();
        let payload = data.get(start..).unwrap_or_default();
        let payload = &payload[..size.min(payload.len())];
        return if comp.starts_with(b"gzip") {
            decompress_with(flate2::read::GzDecoder::new(payload), "gzip").map(Some)
        } else if comp.starts_with(b"zstd") {
            decompress_with(
                zstd::stream::read::Decoder::new(payload).map_err(|e| invalid(format!("zstd: {e}")))?,
                "zstd",
            )
            .map(Some)
        } else if comp.starts_with(b"lzma") {
            xz_auto(payload).map(Some)
        } else {
            Err(invalid(format!("zboot kernel compressed with {} is not supported", String::from_utf8_lossy(comp))))
        };
    }
    if data.starts_with(b"\x1f\x8b") {
        return decompress_with(flate2::read::MultiGzDecoder::new(data), "gzip").map(Some);
    }
    if data.starts_with(b"\x28\xb5\x2f\xfd") {
        let d = zstd::stream::read::Decoder::new(data).map_err(|e| invalid(format!("zstd: {e}")))?;
        return decompress_with(d, "zstd").map(Some);
    }
    if data.starts_with(b"\xfd7zXZ\0") || data.starts_with(b"\x5d\x00\x00") {
        return xz_auto(data).map(Some);
    }
    Ok(None)
}

/// The kernel release of a kernel image: from the x86 boot protocol header
/// (`HdrS`, version string pointer at 0x20e), else from the first
/// `Linux version X.… (` banner.
pub fn scrape_uname(kernel: &[u8]) -> Option<String> {
    if kernel.get(0x202..0x206) == Some(b"HdrS".as_slice()) {
        if let Some(ptr) = pe::u16_at(kernel, 0x20e) {
            let start = 0x200 + ptr as usize;
            if let Some(text) = kernel.get(start..(start + 128).min(kernel.len())) {
                let text = &text[..text.iter().position(|b| *b == 0).unwrap_or(text.len())];
                if let Ok(s) = std::str::from_utf8(text) {
                    // "<release> (<builder>) #…"
                    let mut parts = s.splitn(2, ' ');
                    let release = parts.next().unwrap_or_default();
                    let rest = parts.next().unwrap_or_default();
                    let valid = !release.is_empty()
                        && release.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._+-".contains(c));
                    let paren_ok = rest.starts_with('(')
                        && rest.find(')').is_some_and(|i| i > 1 && !rest[1..i].contains(' '))
                        && rest.find(')').is_some_and(|i| rest[i + 1..].starts_with(" #"));
                    if valid && paren_ok {
                        return Some(release.to_string());
                    }
                }
            }
        }
    }
    let needle = b"Linux version ";
    let mut from = 0;
    while let Some(i) = kernel[from..].windows(needle.len()).position(|w| w == needle) {
        let v = from + i + needle.len();
        let rest = &kernel[v..];
        let end = rest.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(rest.len());
        let word = &rest[..end];
        if word.len() >= 2
            && word[0].is_ascii_digit()
            && word[1] == b'.'
            && rest.get(end..end + 2) == Some(b" (".as_slice())
        {
            if let Ok(s) = std::str::from_utf8(word) {
                return Some(s.to_string());
            }
        }
        from = v;
    }
    None
}

/// Append `sections` to the PE image `stub` the way ukify's `pe_add_sections`
/// does (see the module documentation). `.linux` is marked as code, everything
/// else as initialized data.
pub fn add_sections(stub: &[u8], sections: &[NewSection]) -> Result<Vec<u8>> {
    let bad = |e: pe::PeError| invalid(format!("Stub: {e}"));
    let mut data = stub.to_vec();
    let mut pe = PeFile::parse(&data).map_err(bad)?;

    // Drop a symbol/string table at the end of the file (old, unstripped stubs).
    if pe.coff.pointer_to_symbol_table != 0 {
        let symtab = pe.coff.pointer_to_symbol_table as usize;
        let mut size = 18 * pe.coff.number_of_symbols as usize;
        if let Some(strings) = pe::u32_at(&data, symtab + size) {
            size += strings as usize;
        }
        if symtab + size == data.len() {
            data.truncate(symtab);
            let c = pe.coff.offset;
            data[c + 8..c + 16].fill(0);
            let ch = pe.coff.characteristics | FILE_LOCAL_SYMS_STRIPPED;
            data[c + 18..c + 20].copy_from_slice(&ch.to_le_bytes());
        }
    }

    // Pad the stub's sections to the file alignment.
    let fa = pe.optional.file_alignment as usize;
    let sa = pe.optional.section_alignment as usize;
    let mut pointers: Vec<(usize, usize)> =
        pe.sections.iter().map(|s| (s.raw_pointer as usize, s.raw_size as usize)).collect();
    for i in 0..pointers.len() {
        let (oldp, oldsz) = pointers[i];
        let (newp, newsz) = (round_up(oldp, fa), round_up(oldsz, fa));
        let (padp, padsz) = (newp - oldp, newsz - oldsz);
        if padp == 0 && padsz == 0 {
            continue;
        }
        for later in pointers.iter_mut().skip(i + 1) {
            later.0 += padp + padsz;
        }
        pointers[i] = (newp, newsz);
        let a = oldp.min(data.len());
        let b = (oldp + oldsz).min(data.len());
        let mut out = Vec::with_capacity(data.len() + padp + padsz);
        out.extend_from_slice(&data[..a]);
        out.resize(out.len() + padp, 0);
        out.extend_from_slice(&data[a..b]);
        out.resize(out.len() + padsz, 0);
        out.extend_from_slice(&data[b..]);
        data = out;
    }
    for (s, (p, sz)) in pe.sections.iter().zip(&pointers) {
        let h = s.header_offset;
        data[h + 16..h + 20].copy_from_slice(&(*sz as u32).to_le_bytes());
        data[h + 20..h + 24].copy_from_slice(&(*p as u32).to_le_bytes());
    }
    let headers = round_up(pe.optional.size_of_headers as usize, fa);
    let at = pe.optional.field_offset(OptionalField::SizeOfHeaders);
    data[at..at + 4].copy_from_slice(&(headers as u32).to_le_bytes());
    pe = PeFile::parse(&data).map_err(bad)?;

    if pe.is_signed() {
        return Err(invalid("Stub image is signed, refusing."));
    }

    let n_original = pe.sections.len();
    let mut initialized = pe.optional.size_of_initialized_data;
    let mut dll = pe.optional.dll_characteristics;
    // (header offset, virtual address, virtual size) of the last section.
    let last = |pe: &PeFile| pe.sections.last().map(|s| (s.header_offset, s.virtual_address, s.virtual_size));
    let (mut last_header, mut last_va, mut last_vsize) = last(&pe).unwrap_or((pe.section_table_end(), 0, 0));
    let mut count = pe.coff.number_of_sections;
    if pe.sections.is_empty() {
        last_header = pe.section_table_end().saturating_sub(SECTION_HEADER_SIZE);
    }

    for section in sections {
        check_name(&section.name)?;
        let offset = last_header + SECTION_HEADER_SIZE;
        if offset + SECTION_HEADER_SIZE > headers {
            return Err(invalid(format!("Not enough header space to add section {}.", section.name)));
        }
        let len = section.data.len();
        let vsize = u32::try_from(len).map_err(|_| invalid(format!("Section {} is too large", section.name)))?;

        if section.name == ".linux" {
            if let Ok(inner) = PeFile::parse(&section.data) {
                if inner.optional.dll_characteristics & DLL_NX_COMPAT == 0 {
                    dll &= !DLL_NX_COMPAT;
                }
            }
        }

        // A section the stub already has is replaced in place.
        if section.name != ".dtbauto" {
            if let Some(i) = pe.sections[..n_original].iter().position(|s| s.name == section.name) {
                let s = &pe.sections[i];
                if vsize > s.raw_size {
                    return Err(invalid(format!(
                        "Not enough space in existing section {} to append new data.",
                        section.name
                    )));
                }
                let start = s.raw_pointer as usize;
                let next = match pe.sections.get(i + 1) {
                    Some(n) => n.raw_pointer as usize,
                    None => start + s.raw_size as usize,
                };
                let mut out = Vec::with_capacity(data.len());
                out.extend_from_slice(&data[..start.min(data.len())]);
                out.extend_from_slice(&section.data);
                out.resize(out.len() + (s.raw_size - vsize) as usize, 0);
                out.extend_from_slice(data.get(next..).unwrap_or_default());
                data = out;
                let h = s.header_offset;
                data[h + 8..h + 12].copy_from_slice(&vsize.to_le_bytes());
                pe.sections[i].virtual_size = vsize;
                if i + 1 == pe.sections.len() {
                    last_vsize = vsize;
                }
                continue;
            }
        }

        let pointer = round_up(data.len(), fa);
        let raw = round_up(len, fa);
        let va = round_up(last_va as usize + last_vsize as usize, sa);
        let (pointer32, raw32, va32) = match (u32::try_from(pointer), u32::try_from(raw), u32::try_from(va)) {
            (Ok(p), Ok(r), Ok(v)) => (p, r, v),
            _ => return Err(invalid("The image would be larger than 4 GiB")),
        };
        data.resize(pointer, 0);
        data.extend_from_slice(&section.data);
        data.resize(pointer + raw, 0);

        let mut header = [0u8; SECTION_HEADER_SIZE];
        header[..section.name.len()].copy_from_slice(section.name.as_bytes());
        header[8..12].copy_from_slice(&vsize.to_le_bytes());
        header[12..16].copy_from_slice(&va32.to_le_bytes());
        header[16..20].copy_from_slice(&raw32.to_le_bytes());
        header[20..24].copy_from_slice(&pointer32.to_le_bytes());
        let kind = if section.name == ".linux" { SCN_CNT_CODE } else { SCN_CNT_INITIALIZED_DATA };
        header[36..40].copy_from_slice(&(SCN_MEM_READ | kind).to_le_bytes());
        data[offset..offset + SECTION_HEADER_SIZE].copy_from_slice(&header);

        count = count.checked_add(1).ok_or_else(|| invalid("Too many sections"))?;
        initialized = initialized.wrapping_add(vsize);
        pe.sections.push(pe::Section {
            name: section.name.clone(),
            header_offset: offset,
            virtual_size: vsize,
            virtual_address: va32,
            raw_size: raw32,
            raw_pointer: pointer32,
            characteristics: SCN_MEM_READ | kind,
        });
        (last_header, last_va, last_vsize) = (offset, va32, vsize);
    }

    let c = pe.coff.offset;
    data[c + 2..c + 4].copy_from_slice(&count.to_le_bytes());
    let put32 = |data: &mut Vec<u8>, f: OptionalField, v: u32| {
        let at = pe.optional.field_offset(f);
        data[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    put32(&mut data, OptionalField::SizeOfInitializedData, initialized);
    put32(&mut data, OptionalField::CheckSum, 0);
    let image = round_up(last_va as usize + last_vsize as usize, sa);
    put32(&mut data, OptionalField::SizeOfImage, u32::try_from(image).map_err(|_| invalid("Image too large"))?);
    let at = pe.optional.field_offset(OptionalField::DllCharacteristics);
    data[at..at + 2].copy_from_slice(&dll.to_le_bytes());
    Ok(data)
}

/// The sections ukify would add for `input`, in order.
pub fn plan_sections(input: &UkiInput) -> Result<Vec<NewSection>> {
    let stub = read(&input.stub)?;
    let mut linux = match &input.linux {
        Some(p) => Some(read(p)?),
        None => None,
    };
    if let Some(k) = &linux {
        if PeFile::parse(k).is_err() {
            if let Some(d) = maybe_decompress(k)? {
                linux = Some(d);
            }
        }
    }
    let uname = match (&input.uname, &linux) {
        (Some(u), _) => Some(u.clone()),
        (None, Some(k)) => scrape_uname(k),
        (None, None) => None,
    };
    let profile = match (&input.profile, input.join_profiles.is_empty()) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => Some("ID=main".to_string()),
        (None, true) => None,
    };

    let mut s = Sections::default();
    if let (Some(p), true) = (&profile, input.join_profiles.is_empty()) {
        s.add(".profile", p.clone().into_bytes())?;
    }
    let text = |t: &Option<String>| t.as_ref().filter(|t| !t.is_empty()).map(|t| t.clone().into_bytes());
    let file = |p: &Option<PathBuf>| p.as_ref().map(|p| read(p)).transpose();
    let mut ordered: Vec<(&str, Option<Vec<u8>>)> = vec![
        (".osrel", text(&input.os_release)),
        (".cmdline", text(&input.cmdline)),
        (".dtb", file(&input.devicetree)?),
    ];
    for dtb in &input.devicetree_auto {
        ordered.push((".dtbauto", Some(read(dtb)?)));
    }
    ordered.extend([
        (".hwids", input.hwids.clone().filter(|h| !h.is_empty())),
        (".uname", text(&uname)),
        (".splash", file(&input.splash)?),
        (".pcrpkey", input.pcrpkey.clone().filter(|k| !k.is_empty())),
        (".linux", linux.clone()),
        (".initrd", join_initrds(&input.initrds)?),
        (".ucode", file(&input.microcode)?),
    ]);
    for (name, data) in ordered {
        if let Some(data) = data {
            s.add(name, data)?;
        }
    }
    for (name, data) in &input.extra {
        check_name(name)?;
        s.add(name, data.clone())?;
    }
    if !input.join_profiles.is_empty() || profile.is_none() {
        let (pes, default): (Vec<&[u8]>, &str) = match &linux {
            Some(k) => (vec![&stub, k], STUB_SBAT),
            None => (vec![], ADDON_SBAT),
        };
        let texts = if input.sbat.is_empty() { vec![default.to_string()] } else { input.sbat.clone() };
        s.add(".sbat", merge_sbat(&pes, &texts).into_bytes())?;
    }
    if let (Some(p), false) = (&profile, input.join_profiles.is_empty()) {
        s.add(".profile", p.clone().into_bytes())?;
    }
    if let Some(sig) = input.pcrsig.as_ref().filter(|s| !s.is_empty()) {
        s.add(".pcrsig", sig.clone())?;
    }

    const IMPORTED: [&str; 10] =
        [".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat", ".profile"];
    for path in &input.join_profiles {
        let data = read(path)?;
        let pe = PeFile::parse(&data).map_err(|source| UkiError::Pe { path: path.clone(), source })?;
        let wanted = |n: &str| IMPORTED.contains(&n) && (n != ".osrel" || input.os_release.is_some());
        let names: Vec<&str> = pe.sections.iter().map(|s| s.name.as_str()).filter(|n| wanted(n)).collect();
        match names.first() {
            None => {
                return Err(invalid(format!("Found no valid sections in PE profile binary {}", path.display())));
            }
            Some(&first) if first != ".profile" => {
                return Err(invalid(format!(
                    "Expected .profile section as first valid section in PE profile binary {} but got {first}",
                    path.display()
                )));
            }
            _ => {}
        }
        if names.iter().filter(|n| **n == ".profile").count() > 1 {
            return Err(invalid(format!("Profile PE binary {} contains multiple .profile sections", path.display())));
        }
        for section in pe.sections.iter().filter(|s| wanted(&s.name)) {
            s.add(&section.name, pe.section_data(&data, section).to_vec())?;
        }
    }
    Ok(s.0)
}

/// Assemble the image described by `input` in memory.
pub fn assemble(input: &UkiInput) -> Result<Vec<u8>> {
    let sections = plan_sections(input)?;
    let stub = read(&input.stub)?;
    add_sections(&stub, &sections).map_err(|e| match e {
        UkiError::Invalid(m) => invalid(format!("{}: {m}", input.stub.display())),
        e => e,
    })
}

/// Write `data` to `output` through a temporary file in the same directory.
pub fn write_atomically(output: &Path, data: &[u8]) -> Result<()> {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = output.file_name().ok_or_else(|| invalid(format!("{} is not a file path", output.display())))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let result = std::fs::write(&tmp, data)
        .map_err(io("writing", &tmp))
        .and_then(|()| std::fs::rename(&tmp, output).map_err(io("renaming to", output)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Build a UKI (or, without a kernel, a PE addon) and write it to `output`.
pub fn build(input: &UkiInput, output: &Path) -> Result<()> {
    let data = assemble(input)?;
    write_atomically(output, &data)
}

/// Build a UKI profile binary for `[UKIProfile]`: `addon_stub` with a leading
/// `.profile` section (`profile`, e.g. from [`profile_text`]) and the profile's
/// `.cmdline`, like `ukify build --profile @file --cmdline @file` does.
pub fn build_profile(addon_stub: &Path, profile: &str, cmdline: Option<&str>, output: &Path) -> Result<()> {
    let input = UkiInput {
        stub: addon_stub.to_path_buf(),
        profile: Some(profile.to_string()),
        cmdline: cmdline.map(str::to_string),
        ..UkiInput::default()
    };
    build(&input, output)
}

/// The content of section `name` of the PE file at `path` (cut to the smaller
/// of its virtual and raw sizes), or `None` when there is no such section.
pub fn extract_section(path: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let data = read(path)?;
    let pe = PeFile::parse(&data).map_err(|source| UkiError::Pe { path: path.to_path_buf(), source })?;
    Ok(pe.section(name).map(|s| pe.section_data(&data, s).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pe::testpe;

    fn stub_with_sbat() -> Vec<u8> {
        testpe::build(
            &[
                (".text", &[0xc3; 0x30]),
                (".sbat", b"sbat,1,SBAT Version,sbat,1,url\nsystemd-stub,1,The systemd Developers,systemd,257,url\n"),
                (".sdmagic", b"#### LoaderInfo: systemd-stub 257 ####"),
            ],
            16,
        )
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("write");
        p
    }

    fn names(data: &[u8]) -> Vec<String> {
        PeFile::parse(data).expect("parse").sections.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn uki_sections_in_ukify_order_and_aligned() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = write(dir.path(), "stub", &stub_with_sbat());
        let mut kernel = testpe::build(&[(".setup", b"s"), (".text", &[0x90; 0x1234])], 0);
        // A kernel without NX_COMPAT.
        let dll = PeFile::parse(&kernel).expect("parse").optional.field_offset(OptionalField::DllCharacteristics);
        kernel[dll..dll + 2].copy_from_slice(&0x0060u16.to_le_bytes());
        let linux = write(dir.path(), "vmlinuz", &kernel);
        let i1 = write(dir.path(), "i1", b"abcde");
        let i2 = write(dir.path(), "i2", b"xyz");
        let input = UkiInput {
            stub: stub.clone(),
            linux: Some(linux),
            initrds: vec![i1, i2],
            cmdline: Some(cmdline_text(&["quiet".into(), "rw".into()])),
            os_release: Some("ID=test\n".into()),
            uname: Some("6.1.0".into()),
            ..Default::default()
        };
        let out = dir.path().join("uki.efi");
        build(&input, &out).expect("build");
        let data = std::fs::read(&out).expect("read");
        assert_eq!(names(&data), [".text", ".sbat", ".sdmagic", ".osrel", ".cmdline", ".uname", ".linux", ".initrd"]);
        let pe = PeFile::parse(&data).expect("parse");
        let mut end = 0;
        for s in &pe.sections {
            assert_eq!(s.virtual_address % 0x1000, 0, "{}", s.name);
            assert_eq!(s.raw_pointer % 0x200, 0, "{}", s.name);
            assert_eq!(s.raw_size % 0x200, 0, "{}", s.name);
            assert!(s.virtual_address as usize >= end, "{} overlaps", s.name);
            end = (s.virtual_address + s.virtual_size) as usize;
        }
        assert_eq!(pe.optional.size_of_image as usize, end.div_ceil(0x1000) * 0x1000);
        assert_eq!(pe.optional.checksum, 0);
        assert_eq!(pe.coff.number_of_sections, 8);
        assert_eq!(extract_section(&out, ".cmdline").expect("x"), Some(b"quiet rw\0".to_vec()));
        assert_eq!(extract_section(&out, ".osrel").expect("x"), Some(b"ID=test\n".to_vec()));
        assert_eq!(extract_section(&out, ".uname").expect("x"), Some(b"6.1.0".to_vec()));
        assert_eq!(extract_section(&out, ".initrd").expect("x"), Some(b"abcde\0\0\0xyz\0".to_vec()));
        assert_eq!(extract_section(&out, ".linux").expect("x"), Some(kernel.clone()));
        assert_eq!(extract_section(&out, ".nope").expect("x"), None);
        // .sbat replaced in place: stub entries, then the default uki entry.
        let sbat = extract_section(&out, ".sbat").expect("x").expect("sbat");
        let sbat = String::from_utf8(sbat).expect("utf8");
        assert!(sbat.starts_with(SBAT_HEADER), "{sbat}");
        assert!(sbat.contains("\nsystemd-stub,1,"), "{sbat}");
        assert!(sbat.ends_with("uki,1,UKI,uki,1,https://uapi-group.org/specifications/specs/unified_kernel_image/\n\0"));
        let sbat_hdr = pe.section(".sbat").expect("sbat");
        assert_eq!(sbat_hdr.raw_size, 0x200);
        // Initialized data grows by the new sections (including .linux), code does not.
        let stub_pe = PeFile::parse(&std::fs::read(&stub).expect("read")).expect("parse");
        let added: u32 = pe.sections[3..].iter().map(|s| s.virtual_size).sum();
        assert_eq!(pe.optional.size_of_initialized_data, stub_pe.optional.size_of_initialized_data + added);
        assert_eq!(pe.optional.size_of_code, stub_pe.optional.size_of_code);
        let linux = pe.section(".linux").expect("linux");
        assert_eq!(linux.characteristics, SCN_MEM_READ | SCN_CNT_CODE);
        assert_eq!(pe.section(".osrel").expect("osrel").characteristics, SCN_MEM_READ | SCN_CNT_INITIALIZED_DATA);
        // The kernel has no NX_COMPAT, so neither does the UKI.
        assert_eq!(pe.optional.dll_characteristics & DLL_NX_COMPAT, 0);
        assert_eq!(crate::pe::kernel_type(&data), crate::pe::KernelType::Uki);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 5);
    }

    #[test]
    fn single_initrd_is_not_padded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let i1 = write(dir.path(), "i1", b"abcde");
        assert_eq!(join_initrds(std::slice::from_ref(&i1)).expect("join"), Some(b"abcde".to_vec()));
        assert_eq!(join_initrds(&[]).expect("join"), None);
        assert!(join_initrds(&[dir.path().join("missing")]).is_err());
    }

    #[test]
    fn addon_gets_addon_sbat_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = write(dir.path(), "addon.stub", &testpe::build(&[(".text", b"\xc3"), (".sdmagic", b"m")], 4));
        let input = UkiInput { stub, cmdline: Some("console=ttyS0".into()), ..Default::default() };
        let data = assemble(&input).expect("assemble");
        assert_eq!(names(&data), [".text", ".sdmagic", ".cmdline", ".sbat"]);
        let pe = PeFile::parse(&data).expect("parse");
        let sbat = pe.section_data(&data, pe.section(".sbat").expect("sbat"));
        assert_eq!(sbat, format!("{SBAT_HEADER}uki-addon,1,UKI Addon,addon,1,https://www.freedesktop.org/software/systemd/man/latest/systemd-stub.html\n\0").as_bytes());
    }

    #[test]
    fn profiles_are_built_and_joined() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addon = write(dir.path(), "addon.stub", &testpe::build(&[(".text", b"\xc3"), (".sdmagic", b"m")], 4));
        let text = profile_text(&[("ID".into(), "debug".into()), ("TITLE".into(), "Debug mode".into())]);
        assert_eq!(text, "ID=debug\nTITLE=\"Debug mode\"\n");
        let p1 = dir.path().join("debug.efi");
        build_profile(&addon, &text, Some("quiet debug\0"), &p1).expect("profile");
        let p1data = std::fs::read(&p1).expect("read");
        // No .sbat in profile binaries, and .profile comes first.
        assert_eq!(names(&p1data), [".text", ".sdmagic", ".profile", ".cmdline"]);

        let stub = write(dir.path(), "stub", &stub_with_sbat());
        let linux = write(dir.path(), "vmlinuz", &testpe::build(&[(".text", b"k")], 0));
        let input = UkiInput {
            stub,
            linux: Some(linux),
            cmdline: Some("quiet\0".into()),
            os_release: Some("ID=x\n".into()),
            uname: Some("1.2.3".into()),
            join_profiles: vec![p1.clone(), p1.clone()],
            ..Default::default()
        };
        let data = assemble(&input).expect("assemble");
        assert_eq!(
            names(&data),
            [
                ".text", ".sbat", ".sdmagic", ".osrel", ".cmdline", ".uname", ".linux", ".profile", ".profile",
                ".cmdline", ".profile", ".cmdline"
            ]
        );
        let pe = PeFile::parse(&data).expect("parse");
        assert_eq!(pe.section_data(&data, &pe.sections[7]), b"ID=main");
        assert_eq!(pe.section_data(&data, &pe.sections[8]), text.as_bytes());
        assert_eq!(pe.section_data(&data, &pe.sections[9]), b"quiet debug\0");

        // A PE that is not a profile binary cannot be joined.
        let bad = UkiInput { join_profiles: vec![addon.clone()], ..input.clone() };
        assert!(matches!(assemble(&bad), Err(UkiError::Invalid(m)) if m.contains("Found no valid sections")));
        let wrong = write(dir.path(), "wrong.efi", &testpe::build(&[(".cmdline", b"x"), (".profile", b"ID=a")], 0));
        let bad = UkiInput { join_profiles: vec![wrong], ..input.clone() };
        assert!(matches!(assemble(&bad), Err(UkiError::Invalid(m)) if m.contains("Expected .profile")));
        let twice = write(dir.path(), "twice.efi", &testpe::build(&[(".profile", b"ID=a"), (".profile", b"ID=b")], 0));
        let bad = UkiInput { join_profiles: vec![twice], ..input };
        assert!(matches!(assemble(&bad), Err(UkiError::Invalid(m)) if m.contains("multiple .profile")));
    }

    #[test]
    fn duplicate_and_bad_sections_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = write(dir.path(), "stub", &stub_with_sbat());
        let input = UkiInput {
            stub: stub.clone(),
            cmdline: Some("x".into()),
            extra: vec![(".cmdline".into(), b"y".to_vec())],
            ..Default::default()
        };
        assert!(matches!(assemble(&input), Err(UkiError::Invalid(m)) if m.contains("Duplicate section .cmdline")));
        let input = UkiInput { stub: stub.clone(), extra: vec![(".waytoolong".into(), vec![1])], ..Default::default() };
        assert!(matches!(assemble(&input), Err(UkiError::Invalid(m)) if m.contains("too long")));
        let input = UkiInput { stub, extra: vec![(".a b".into(), vec![1])], ..Default::default() };
        assert!(matches!(assemble(&input), Err(UkiError::Invalid(m)) if m.contains("Bad section name")));
    }

    #[test]
    fn header_space_and_signed_stubs() {
        // As many new sections as there is header room for, and not one more.
        let stub = testpe::build(&[(".text", b"\xc3")], 0);
        let pe = PeFile::parse(&stub).expect("parse");
        let spare = (pe.optional.size_of_headers as usize - pe.section_table_end()) / SECTION_HEADER_SIZE;
        let many: Vec<NewSection> =
            (0..=spare).map(|i| NewSection { name: format!(".s{i}"), data: vec![i as u8] }).collect();
        let err = add_sections(&stub, &many).expect_err("no room");
        assert!(err.to_string().contains(&format!("Not enough header space to add section .s{spare}")), "{err}");
        let out = add_sections(&stub, &many[..spare]).expect("room");
        assert_eq!(PeFile::parse(&out).expect("parse").sections.len(), spare + 1);

        let mut signed = stub.clone();
        let sec_dir = pe.optional.offset + 112 + 4 * 8;
        signed[sec_dir..sec_dir + 4].copy_from_slice(&0x1000u32.to_le_bytes());
        let err = add_sections(&signed, &many[..1]).expect_err("signed");
        assert!(err.to_string().contains("signed"), "{err}");
        assert!(add_sections(b"not a pe", &many[..1]).is_err());
    }

    #[test]
    fn sbat_too_large_for_the_stub() {
        let stub = stub_with_sbat();
        let big = NewSection { name: ".sbat".into(), data: vec![b'a'; 0x201] };
        let err = add_sections(&stub, &[big]).expect_err("too big");
        assert!(err.to_string().contains("Not enough space in existing section .sbat"), "{err}");
    }

    #[test]
    fn unaligned_stub_is_padded_and_symbols_dropped() {
        // File alignment 0x200, but the second section's raw data is unaligned
        // (as left by a naive strip), plus a symbol table at the end.
        let mut stub = testpe::build(&[(".text", &[1; 0x10]), (".data", &[2; 0x10])], 4);
        let pe = PeFile::parse(&stub).expect("parse");
        let h = pe.sections[1].header_offset;
        let ptr = pe.sections[1].raw_pointer as usize;
        // Move .data to an unaligned place with an unaligned raw size.
        stub.truncate(ptr);
        stub.extend_from_slice(&[0; 8]);
        stub.extend_from_slice(&[2; 0x10]);
        stub[h + 16..h + 20].copy_from_slice(&0x10u32.to_le_bytes());
        stub[h + 20..h + 24].copy_from_slice(&((ptr + 8) as u32).to_le_bytes());
        let symtab = stub.len();
        stub.extend_from_slice(&[0; 18]);
        stub.extend_from_slice(&4u32.to_le_bytes());
        let c = pe.coff.offset;
        stub[c + 8..c + 12].copy_from_slice(&(symtab as u32).to_le_bytes());
        stub[c + 12..c + 16].copy_from_slice(&1u32.to_le_bytes());

        let out = add_sections(&stub, &[NewSection { name: ".cmdline".into(), data: b"x".to_vec() }]).expect("add");
        let pe = PeFile::parse(&out).expect("parse");
        assert_eq!(pe.coff.pointer_to_symbol_table, 0);
        assert_eq!(pe.coff.number_of_symbols, 0);
        assert_ne!(pe.coff.characteristics & FILE_LOCAL_SYMS_STRIPPED, 0);
        let data_sec = &pe.sections[1];
        assert_eq!(data_sec.raw_pointer % 0x200, 0);
        assert_eq!(data_sec.raw_size, 0x200);
        assert_eq!(pe.section_data(&out, data_sec), &[2; 0x10]);
        assert_eq!(pe.section_data(&out, &pe.sections[2]), b"x");
    }

    #[test]
    fn sbat_merging() {
        let kernel = testpe::build(&[(".sbat", b"sbat,1,x\nlinux,1,Linux,linux,6.1,url\n\0\0")], 0);
        let junk = testpe::build(&[(".sbat", b"garbage\n")], 0);
        let merged = merge_sbat(&[&kernel, &junk, b"not a pe"], &["sbat,1\nuki,1\n".into(), "bad".into()]);
        assert_eq!(merged, format!("{SBAT_HEADER}linux,1,Linux,linux,6.1,url\nuki,1\n\0"));
        assert_eq!(merge_sbat(&[], &[]), format!("{SBAT_HEADER}\n\0"));
    }

    #[test]
    fn uname_scraping() {
        let mut k = vec![0u8; 0x1000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        let v = b"6.12.1+deb13-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\0";
        k[0x500..0x500 + v.len()].copy_from_slice(v);
        assert_eq!(scrape_uname(&k).as_deref(), Some("6.12.1+deb13-amd64"));
        let banner = b"junk Linux version 6.8.0-1-arm64 (builder@host) (gcc 13) #1 SMP";
        assert_eq!(scrape_uname(banner).as_deref(), Some("6.8.0-1-arm64"));
        assert_eq!(scrape_uname(b"Linux version unknown"), None);
    }

    #[test]
    fn uname_is_read_from_the_kernel_when_not_given() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stub = write(dir.path(), "stub", &stub_with_sbat());
        let mut kernel = testpe::build(&[(".text", b"Linux version 5.10.0-1-amd64 (x@y) #1")], 0);
        kernel.extend_from_slice(b"pad");
        let linux = write(dir.path(), "vmlinuz", &kernel);
        let input = UkiInput { stub, linux: Some(linux), ..Default::default() };
        let sections = plan_sections(&input).expect("plan");
        let uname = sections.iter().find(|s| s.name == ".uname").expect("uname");
        assert_eq!(uname.data, b"5.10.0-1-amd64");
        // Without an os-release there is no .osrel (ukify would use the host's).
        assert!(sections.iter().all(|s| s.name != ".osrel"));
    }

    #[test]
    fn compressed_kernels_are_decompressed() {
        use std::io::Write;
        let kernel = testpe::build(&[(".text", b"payload")], 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&kernel).expect("gz");
        let gz = gz.finish().expect("gz");
        assert_eq!(maybe_decompress(&gz).expect("gunzip"), Some(kernel.clone()));
        let zst = zstd::encode_all(kernel.as_slice(), 3).expect("zstd");
        assert_eq!(maybe_decompress(&zst).expect("unzstd"), Some(kernel.clone()));
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&kernel).expect("xz");
        let xz = xz.finish().expect("xz");
        assert_eq!(maybe_decompress(&xz).expect("unxz"), Some(kernel.clone()));
        // A zboot image carrying gzip.
        let mut zboot = vec![0u8; 0x40];
        zboot[..2].copy_from_slice(b"MZ");
        zboot[4..8].copy_from_slice(b"zimg");
        zboot[8..12].copy_from_slice(&0x40u32.to_le_bytes());
        zboot[0xc..0x10].copy_from_slice(&(gz.len() as u32).to_le_bytes());
        zboot[0x18..0x1c].copy_from_slice(b"gzip");
        zboot.extend_from_slice(&gz);
        assert_eq!(maybe_decompress(&zboot).expect("zboot"), Some(kernel.clone()));
        assert_eq!(maybe_decompress(&kernel).expect("pe"), None);
        assert_eq!(maybe_decompress(b"\x7fELF....").expect("elf"), None);
        assert_eq!(maybe_decompress(b"plain").expect("other"), None);
        assert!(maybe_decompress(b"\x1f\x8b\x08broken").is_err());

        let dir = tempfile::tempdir().expect("tempdir");
        let stub = write(dir.path(), "stub", &stub_with_sbat());
        let linux = write(dir.path(), "vmlinuz.gz", &gz);
        let input = UkiInput { stub, linux: Some(linux), uname: Some("1".into()), ..Default::default() };
        let sections = plan_sections(&input).expect("plan");
        assert_eq!(sections.iter().find(|s| s.name == ".linux").expect("linux").data, kernel);
    }
}
