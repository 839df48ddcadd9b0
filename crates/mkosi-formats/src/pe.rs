//! Reading PE/COFF images (EFI binaries, x86 bzImages, UKIs and PE addons).
//!
//! Only what mkosi needs is parsed: the DOS header, the PE signature, the
//! COFF file header, the optional header (PE32 and PE32+) with its data
//! directories, and the section table. [`PeFile`] keeps the byte offsets of
//! the header fields so that [`crate::uki`] can patch them in place.

use std::path::Path;

/// Errors from reading PE images.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    Invalid(String),
    #[error("reading {}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

pub type Result<T, E = PeError> = std::result::Result<T, E>;

/// Size of one section header.
pub const SECTION_HEADER_SIZE: usize = 40;
/// Size of the COFF file header (after the `PE\0\0` signature).
pub const COFF_HEADER_SIZE: usize = 20;
/// Index of the certificate table (Authenticode signatures) in the data directories.
pub const DIRECTORY_SECURITY: usize = 4;

/// `IMAGE_SCN_CNT_CODE`.
pub const SCN_CNT_CODE: u32 = 0x0000_0020;
/// `IMAGE_SCN_CNT_INITIALIZED_DATA`.
pub const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
/// `IMAGE_SCN_MEM_READ`.
pub const SCN_MEM_READ: u32 = 0x4000_0000;
/// `IMAGE_FILE_LOCAL_SYMS_STRIPPED` (COFF characteristics).
pub const FILE_LOCAL_SYMS_STRIPPED: u16 = 0x0008;
/// `IMAGE_DLLCHARACTERISTICS_NX_COMPAT`.
pub const DLL_NX_COMPAT: u16 = 0x0100;

pub(crate) fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    data.get(off..off.checked_add(2)?).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

pub(crate) fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    data.get(off..off.checked_add(4)?).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The COFF file header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoffHeader {
    /// File offset of the header (right after `PE\0\0`).
    pub offset: usize,
    pub machine: u16,
    pub number_of_sections: u16,
    pub time_date_stamp: u32,
    pub pointer_to_symbol_table: u32,
    pub number_of_symbols: u32,
    pub size_of_optional_header: u16,
    pub characteristics: u16,
}

/// The fields of the optional header mkosi reads or rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalHeader {
    /// File offset of the optional header.
    pub offset: usize,
    /// `0x10b` (PE32) or `0x20b` (PE32+).
    pub magic: u16,
    pub size_of_code: u32,
    pub size_of_initialized_data: u32,
    pub address_of_entry_point: u32,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub checksum: u32,
    pub subsystem: u16,
    pub dll_characteristics: u16,
    /// (VirtualAddress, Size) of each data directory.
    pub data_directories: Vec<(u32, u32)>,
}

impl OptionalHeader {
    /// Whether this is a PE32+ (64-bit) image.
    pub fn is_pe32_plus(&self) -> bool {
        self.magic == 0x20b
    }

    /// File offsets of the fields [`crate::uki`] rewrites.
    pub(crate) fn field_offset(&self, field: OptionalField) -> usize {
        self.offset
            + match field {
                OptionalField::SizeOfInitializedData => 8,
                OptionalField::SizeOfImage => 56,
                OptionalField::SizeOfHeaders => 60,
                OptionalField::CheckSum => 64,
                OptionalField::DllCharacteristics => 70,
            }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum OptionalField {
    SizeOfInitializedData,
    SizeOfImage,
    SizeOfHeaders,
    CheckSum,
    DllCharacteristics,
}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name with trailing NULs removed (names are not required to be UTF-8;
    /// invalid bytes are replaced).
    pub name: String,
    /// File offset of this section's header.
    pub header_offset: usize,
    pub virtual_size: u32,
    pub virtual_address: u32,
    pub raw_size: u32,
    pub raw_pointer: u32,
    pub characteristics: u32,
}

impl Section {
    /// The size of the section's content: the smaller of the virtual size and
    /// the raw (file-aligned) size, as ukify and mkosi take it when extracting.
    pub fn content_size(&self) -> u32 {
        self.virtual_size.min(self.raw_size)
    }
}

/// A parsed PE image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeFile {
    /// File offset of the `PE\0\0` signature (`e_lfanew`).
    pub pe_offset: usize,
    pub coff: CoffHeader,
    pub optional: OptionalHeader,
    pub sections: Vec<Section>,
}

fn invalid(msg: impl Into<String>) -> PeError {
    PeError::Invalid(msg.into())
}

impl PeFile {
    /// Parse the headers of a PE image.
    pub fn parse(data: &[u8]) -> Result<PeFile> {
        if data.get(..2) != Some(b"MZ".as_slice()) {
            return Err(invalid("no MZ signature"));
        }
        let pe_offset = u32_at(data, 0x3c).ok_or_else(|| invalid("truncated DOS header"))? as usize;
        if data.get(pe_offset..pe_offset.saturating_add(4)) != Some(b"PE\0\0".as_slice()) {
            return Err(invalid("no PE signature"));
        }
        let c = pe_offset + 4;
        let truncated = || invalid("truncated COFF header");
        let coff = CoffHeader {
            offset: c,
            machine: u16_at(data, c).ok_or_else(truncated)?,
            number_of_sections: u16_at(data, c + 2).ok_or_else(truncated)?,
            time_date_stamp: u32_at(data, c + 4).ok_or_else(truncated)?,
            pointer_to_symbol_table: u32_at(data, c + 8).ok_or_else(truncated)?,
            number_of_symbols: u32_at(data, c + 12).ok_or_else(truncated)?,
            size_of_optional_header: u16_at(data, c + 16).ok_or_else(truncated)?,
            characteristics: u16_at(data, c + 18).ok_or_else(truncated)?,
        };

        let o = c + COFF_HEADER_SIZE;
        let opt_end = o + coff.size_of_optional_header as usize;
        if opt_end > data.len() {
            return Err(invalid("truncated optional header"));
        }
        let opt = &data[..opt_end];
        let truncated = || invalid("truncated optional header");
        let magic = u16_at(opt, o).ok_or_else(truncated)?;
        let (rva_count_at, dirs_at) = match magic {
            0x10b => (o + 92, o + 96),
            0x20b => (o + 108, o + 112),
            m => return Err(invalid(format!("unknown optional header magic {m:#x}"))),
        };
        let rva_count = u32_at(opt, rva_count_at).ok_or_else(truncated)?;
        // Like other readers, only the directories that fit are believed.
        let fit = (opt_end.saturating_sub(dirs_at) / 8) as u32;
        let data_directories = (0..rva_count.min(fit).min(16) as usize)
            .map(|i| {
                let at = dirs_at + i * 8;
                Ok((u32_at(opt, at).ok_or_else(truncated)?, u32_at(opt, at + 4).ok_or_else(truncated)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let optional = OptionalHeader {
            offset: o,
            magic,
            size_of_code: u32_at(opt, o + 4).ok_or_else(truncated)?,
            size_of_initialized_data: u32_at(opt, o + 8).ok_or_else(truncated)?,
            address_of_entry_point: u32_at(opt, o + 16).ok_or_else(truncated)?,
            section_alignment: u32_at(opt, o + 32).ok_or_else(truncated)?,
            file_alignment: u32_at(opt, o + 36).ok_or_else(truncated)?,
            size_of_image: u32_at(opt, o + 56).ok_or_else(truncated)?,
            size_of_headers: u32_at(opt, o + 60).ok_or_else(truncated)?,
            checksum: u32_at(opt, o + 64).ok_or_else(truncated)?,
            subsystem: u16_at(opt, o + 68).ok_or_else(truncated)?,
            dll_characteristics: u16_at(opt, o + 70).ok_or_else(truncated)?,
            data_directories,
        };

        let table = opt_end;
        let mut sections = Vec::with_capacity(coff.number_of_sections as usize);
        for i in 0..coff.number_of_sections as usize {
            let h = table + i * SECTION_HEADER_SIZE;
            let Some(raw) = data.get(h..h + SECTION_HEADER_SIZE) else {
                return Err(invalid(format!("section table truncated at section {i}")));
            };
            let name_bytes = &raw[..8];
            let end = name_bytes.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
            let field = |at: usize| u32_at(raw, at).unwrap_or(0);
            sections.push(Section {
                name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
                header_offset: h,
                virtual_size: field(8),
                virtual_address: field(12),
                raw_size: field(16),
                raw_pointer: field(20),
                characteristics: field(36),
            });
        }
        Ok(PeFile { pe_offset, coff, optional, sections })
    }

    /// File offset of the first byte after the section table.
    pub fn section_table_end(&self) -> usize {
        self.coff.offset
            + COFF_HEADER_SIZE
            + self.coff.size_of_optional_header as usize
            + self.sections.len() * SECTION_HEADER_SIZE
    }

    /// The first section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Whether a section called `name` exists.
    pub fn has_section(&self, name: &str) -> bool {
        self.section(name).is_some()
    }

    /// The content of `section` in `data` ([`Section::content_size`] bytes from
    /// its raw pointer, cut short at the end of the file).
    pub fn section_data<'d>(&self, data: &'d [u8], section: &Section) -> &'d [u8] {
        let start = (section.raw_pointer as usize).min(data.len());
        let end = start.saturating_add(section.content_size() as usize).min(data.len());
        &data[start..end]
    }

    /// The whole raw (file-aligned) data of `section`, cut short at the end of the file.
    pub fn section_raw_data<'d>(&self, data: &'d [u8], section: &Section) -> &'d [u8] {
        let start = (section.raw_pointer as usize).min(data.len());
        let end = start.saturating_add(section.raw_size as usize).min(data.len());
        &data[start..end]
    }

    /// Whether the image carries an Authenticode signature (a certificate table).
    pub fn is_signed(&self) -> bool {
        self.optional.data_directories.get(DIRECTORY_SECURITY).is_some_and(|(va, _)| *va != 0)
    }
}

/// What kind of EFI binary a kernel image is (upstream's `KernelType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelType {
    /// A unified kernel image: has `.linux`, `.sdmagic` and `.osrel`.
    Uki,
    /// Has `.linux` and `.sdmagic` and one of `.cmdline`, `.dtb`, `.initrd`,
    /// `.ucode`, but no `.osrel`.
    Addon,
    /// Any other PE image (an x86 bzImage with its EFI stub is one).
    Pe,
    /// Not a PE image at all.
    Unknown,
}

impl KernelType {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelType::Uki => "uki",
            KernelType::Addon => "addon",
            KernelType::Pe => "pe",
            KernelType::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for KernelType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classify a kernel image the way upstream mkosi does. Note that upstream's
/// rule for addons also requires `.linux` (so what ukify builds as a PE addon,
/// which has no `.linux`, is classified as a plain [`KernelType::Pe`]).
pub fn kernel_type(data: &[u8]) -> KernelType {
    let Ok(pe) = PeFile::parse(data) else { return KernelType::Unknown };
    let has = |n: &str| pe.has_section(n);
    if has(".linux") && has(".sdmagic") && has(".osrel") {
        KernelType::Uki
    } else if has(".linux") && has(".sdmagic") && [".cmdline", ".dtb", ".initrd", ".ucode"].iter().any(|n| has(n)) {
        KernelType::Addon
    } else {
        KernelType::Pe
    }
}

/// [`kernel_type`] of a file; unreadable files are an error.
pub fn kernel_type_of(path: &Path) -> Result<KernelType> {
    let data = std::fs::read(path).map_err(|source| PeError::Io { path: path.to_path_buf(), source })?;
    Ok(kernel_type(&data))
}

#[cfg(any(test, feature = "test-util"))]
pub mod testpe {
    //! Minimal synthetic PE32+ images for tests (of this crate, and of others through the
    //! `test-util` feature).

    /// A PE32+ EFI application with the given sections (name, content) and
    /// header room for `spare_headers` more section headers.
    pub fn build(sections: &[(&str, &[u8])], spare_headers: usize) -> Vec<u8> {
        build_with(sections, spare_headers, 0x200, 0x1000, false)
    }

    pub fn build_with(
        sections: &[(&str, &[u8])],
        spare_headers: usize,
        file_align: u32,
        sect_align: u32,
        pe32: bool,
    ) -> Vec<u8> {
        let round = |x: usize, a: usize| x.div_ceil(a) * a;
        let pe_off = 0x80usize;
        let opt_size: usize = if pe32 { 96 + 16 * 8 } else { 112 + 16 * 8 };
        let table = pe_off + 4 + 20 + opt_size;
        let headers_end = table + (sections.len() + spare_headers) * 40;
        let size_of_headers = round(headers_end, file_align as usize);
        let mut out = vec![0u8; size_of_headers];
        out[0..2].copy_from_slice(b"MZ");
        out[0x3c..0x40].copy_from_slice(&(pe_off as u32).to_le_bytes());
        out[pe_off..pe_off + 4].copy_from_slice(b"PE\0\0");
        let c = pe_off + 4;
        out[c..c + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        out[c + 2..c + 4].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        out[c + 16..c + 18].copy_from_slice(&(opt_size as u16).to_le_bytes());
        out[c + 18..c + 20].copy_from_slice(&0x0206u16.to_le_bytes());
        let o = c + 20;
        out[o..o + 2].copy_from_slice(&(if pe32 { 0x10bu16 } else { 0x20b }).to_le_bytes());
        out[o + 32..o + 36].copy_from_slice(&sect_align.to_le_bytes());
        out[o + 36..o + 40].copy_from_slice(&file_align.to_le_bytes());
        out[o + 60..o + 64].copy_from_slice(&(size_of_headers as u32).to_le_bytes());
        out[o + 68..o + 70].copy_from_slice(&10u16.to_le_bytes());
        out[o + 70..o + 72].copy_from_slice(&0x0160u16.to_le_bytes());
        let rva = if pe32 { o + 92 } else { o + 108 };
        out[rva..rva + 4].copy_from_slice(&16u32.to_le_bytes());
        let mut va = round(size_of_headers, sect_align as usize);
        for (i, (name, content)) in sections.iter().enumerate() {
            let h = table + i * 40;
            let ptr = out.len();
            let raw = round(content.len(), file_align as usize);
            out.extend_from_slice(content);
            out.resize(ptr + raw, 0);
            let mut n = [0u8; 8];
            n[..name.len()].copy_from_slice(name.as_bytes());
            out[h..h + 8].copy_from_slice(&n);
            out[h + 8..h + 12].copy_from_slice(&(content.len() as u32).to_le_bytes());
            out[h + 12..h + 16].copy_from_slice(&(va as u32).to_le_bytes());
            out[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            out[h + 20..h + 24].copy_from_slice(&(ptr as u32).to_le_bytes());
            let ch: u32 = if *name == ".text" { 0x6000_0020 } else { 0x4000_0040 };
            out[h + 36..h + 40].copy_from_slice(&ch.to_le_bytes());
            va = round(va + content.len().max(1), sect_align as usize);
        }
        out[o + 56..o + 60].copy_from_slice(&(va as u32).to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sections_of_pe32_plus() {
        let data = testpe::build(&[(".text", b"\xc3"), (".sbat", b"sbat,1\n"), (".sdmagic", b"#### LoaderInfo")], 2);
        let pe = PeFile::parse(&data).expect("parse");
        assert!(pe.optional.is_pe32_plus());
        assert_eq!(pe.optional.section_alignment, 0x1000);
        assert_eq!(pe.optional.file_alignment, 0x200);
        let names: Vec<&str> = pe.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [".text", ".sbat", ".sdmagic"]);
        let sbat = pe.section(".sbat").expect("sbat");
        assert_eq!(sbat.virtual_size, 7);
        assert_eq!(sbat.raw_size, 0x200);
        assert_eq!(sbat.raw_pointer % 0x200, 0);
        assert_eq!(pe.section_data(&data, sbat), b"sbat,1\n");
        assert_eq!(pe.section_raw_data(&data, sbat).len(), 0x200);
        assert!(!pe.is_signed());
        assert_eq!(pe.section_table_end(), pe.sections[2].header_offset + SECTION_HEADER_SIZE);
    }

    #[test]
    fn parses_pe32() {
        let data = testpe::build_with(&[(".text", b"\xc3")], 0, 0x200, 0x1000, true);
        let pe = PeFile::parse(&data).expect("parse");
        assert!(!pe.optional.is_pe32_plus());
        assert_eq!(pe.optional.data_directories.len(), 16);
        assert_eq!(pe.sections.len(), 1);
    }

    #[test]
    fn section_data_is_cut_to_the_smaller_size() {
        let mut data = testpe::build(&[(".text", &[0x90; 0x300])], 0);
        let pe = PeFile::parse(&data).expect("parse");
        let h = pe.sections[0].header_offset;
        // Virtual size larger than the raw size (e.g. .bss-like tail): raw size wins.
        data[h + 8..h + 12].copy_from_slice(&0x1000u32.to_le_bytes());
        let pe = PeFile::parse(&data).expect("parse");
        assert_eq!(pe.section_data(&data, &pe.sections[0]).len(), 0x400);
    }

    #[test]
    fn rejects_non_pe() {
        assert!(PeFile::parse(b"").is_err());
        assert!(PeFile::parse(b"\x7fELF\x02\x01\x01").is_err());
        let mut data = testpe::build(&[(".text", b"\xc3")], 0);
        data[0x80] = b'X';
        assert!(matches!(PeFile::parse(&data), Err(PeError::Invalid(_))));
        let data = testpe::build(&[(".text", b"\xc3")], 0);
        // A section table cut off by the end of the file.
        assert!(PeFile::parse(&data[..0x80 + 24 + 240 + 10]).is_err());
        // An out-of-range e_lfanew.
        let mut data = testpe::build(&[(".text", b"\xc3")], 0);
        data[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(PeFile::parse(&data).is_err());
    }

    #[test]
    fn kernel_types() {
        let uki = testpe::build(&[(".text", b"x"), (".sdmagic", b"m"), (".osrel", b"ID=x"), (".linux", b"k")], 0);
        assert_eq!(kernel_type(&uki), KernelType::Uki);
        let addon = testpe::build(&[(".sdmagic", b"m"), (".linux", b"k"), (".cmdline", b"quiet")], 0);
        assert_eq!(kernel_type(&addon), KernelType::Addon);
        let ucode = testpe::build(&[(".sdmagic", b"m"), (".linux", b"k"), (".ucode", b"u")], 0);
        assert_eq!(kernel_type(&ucode), KernelType::Addon);
        // Without .linux upstream's rule does not call it an addon.
        let pe_addon = testpe::build(&[(".sdmagic", b"m"), (".cmdline", b"quiet")], 0);
        assert_eq!(kernel_type(&pe_addon), KernelType::Pe);
        let bzimage = testpe::build(&[(".setup", b"s"), (".text", b"t")], 0);
        assert_eq!(kernel_type(&bzimage), KernelType::Pe);
        assert_eq!(kernel_type(b"\x1f\x8b\x08gzip"), KernelType::Unknown);
        assert_eq!(KernelType::Addon.to_string(), "addon");
    }

    #[test]
    fn kernel_type_of_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("k");
        std::fs::write(&p, testpe::build(&[(".linux", b"k")], 0)).expect("write");
        assert_eq!(kernel_type_of(&p).expect("read"), KernelType::Pe);
        assert!(matches!(kernel_type_of(&dir.path().join("missing")), Err(PeError::Io { .. })));
    }
}
