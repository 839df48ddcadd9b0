//! Closed sets of values used by settings (distributions, architectures,
//! output formats, …).
//!
//! Every enum keeps the exact spelling upstream mkosi uses in configuration
//! files and in its JSON output, so that `FromStr`/`as_str` round-trip the
//! user-visible strings. The `VALUES` constants feed the value parsers in the
//! settings table and the `--help` choices.

use std::fmt;
use std::str::FromStr;

/// Error returned when a string is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not a valid {kind}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const VALUES: &'static [&'static str] = &[$($s),+];
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: stringify!($name), value: s.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// Target distributions.
    Distribution {
        Fedora = "fedora",
        Debian = "debian",
        Kali = "kali",
        Ubuntu = "ubuntu",
        Postmarketos = "postmarketos",
        Arch = "arch",
        Opensuse = "opensuse",
        Mageia = "mageia",
        Centos = "centos",
        Rhel = "rhel",
        RhelUbi = "rhel-ubi",
        Openmandriva = "openmandriva",
        Rocky = "rocky",
        Alma = "alma",
        Azure = "azure",
        Custom = "custom",
    }
);

str_enum!(
    /// CPU architectures, in systemd's naming.
    Architecture {
        Alpha = "alpha",
        Arc = "arc",
        Arm = "arm",
        Arm64 = "arm64",
        Ia64 = "ia64",
        Loongarch64 = "loongarch64",
        MipsLe = "mips-le",
        Mips64Le = "mips64-le",
        Parisc = "parisc",
        Ppc = "ppc",
        Ppc64 = "ppc64",
        Ppc64Le = "ppc64-le",
        Riscv32 = "riscv32",
        Riscv64 = "riscv64",
        S390 = "s390",
        S390x = "s390x",
        Tilegx = "tilegx",
        X86 = "x86",
        X86_64 = "x86-64",
    }
);

str_enum!(
    /// Output formats (`Format=`).
    OutputFormat {
        Confext = "confext",
        Cpio = "cpio",
        Directory = "directory",
        Disk = "disk",
        Esp = "esp",
        None = "none",
        Portable = "portable",
        Sysext = "sysext",
        Tar = "tar",
        Uki = "uki",
        Oci = "oci",
        Addon = "addon",
    }
);

str_enum!(
    /// `auto`/`enabled`/`disabled` settings.
    Feature {
        Auto = "auto",
        Enabled = "enabled",
        Disabled = "disabled",
    }
);

str_enum!(ManifestFormat { Json = "json", Changelog = "changelog" });

str_enum!(
    /// Compression algorithms. Parsing by *name* (see [`Compression::from_name`])
    /// also accepts the aliases `zst` and `gzip`.
    Compression {
        None = "none",
        Zstd = "zstd",
        Xz = "xz",
        Bz2 = "bz2",
        Gz = "gz",
        Lz4 = "lz4",
        Lzma = "lzma",
    }
);

str_enum!(Bootloader {
    None = "none",
    Uki = "uki",
    SystemdBoot = "systemd-boot",
    Grub = "grub",
    UkiSigned = "uki-signed",
    SystemdBootSigned = "systemd-boot-signed",
    GrubSigned = "grub-signed",
});

str_enum!(BiosBootloader { None = "none", Grub = "grub" });
str_enum!(ShimBootloader { None = "none", Signed = "signed", Unsigned = "unsigned" });
str_enum!(UnifiedKernelImage { None = "none", Auto = "auto", Signed = "signed", Unsigned = "unsigned" });
str_enum!(CacheOnly { Always = "always", Auto = "auto", Metadata = "metadata", Never = "never" });
str_enum!(Firmware {
    Auto = "auto",
    Linux = "linux",
    LinuxNoinitrd = "linux-noinitrd",
    Uefi = "uefi",
    UefiSecureBoot = "uefi-secure-boot",
});
str_enum!(ConsoleMode {
    Interactive = "interactive",
    ReadOnly = "read-only",
    Native = "native",
    Gui = "gui",
    Headless = "headless",
});
str_enum!(Network { Interface = "interface", User = "user", None = "none" });
str_enum!(Vmm { Qemu = "qemu", Vmspawn = "vmspawn" });
str_enum!(QemuDiskType { VirtioBlk = "virtio-blk", VirtioScsi = "virtio-scsi", Nvme = "nvme", ScsiCd = "scsi-cd" });
str_enum!(Ssh { Always = "always", Auto = "auto", Runtime = "runtime", Never = "never" });
str_enum!(Incremental { Yes = "yes", No = "no", Strict = "strict" });
str_enum!(BuildSourcesEphemeral { Yes = "yes", No = "no", Buildcache = "buildcache" });
str_enum!(Verity { Disabled = "disabled", Hash = "hash", Signed = "signed", Defer = "defer", Auto = "auto" });
str_enum!(SecureBootSignTool { Auto = "auto", Sbsign = "sbsign", SystemdSbsign = "systemd-sbsign" });
str_enum!(ArtifactOutput {
    Uki = "uki",
    Kernel = "kernel",
    Initrd = "initrd",
    Partitions = "partitions",
    Tar = "tar",
    Pcrs = "pcrs",
    Roothash = "roothash",
    OsRelease = "os-release",
    KernelModulesInitrd = "kernel-modules-initrd",
    RepartDefinitions = "repart-definitions",
});
str_enum!(ToolsTreeProfile { Devel = "devel", Misc = "misc", PackageManager = "package-manager", Runtime = "runtime" });
str_enum!(InitrdProfile {
    Lvm = "lvm",
    Network = "network",
    Nfs = "nfs",
    Pkcs11 = "pkcs11",
    Plymouth = "plymouth",
    Raid = "raid",
});
str_enum!(DriveFlag { Persist = "persist" });
str_enum!(KeySourceType { File = "file", Engine = "engine", Provider = "provider" });
str_enum!(CertificateSourceType { File = "file", Provider = "provider" });
str_enum!(DocFormat { Auto = "auto", Markdown = "markdown", Man = "man", Pandoc = "pandoc", System = "system" });

impl Compression {
    /// Look a compression up by its *name* as upstream does (`Compression[name]`),
    /// which accepts the aliases `zst` (= zstd) and `gzip` (= gz).
    pub fn from_name(s: &str) -> Option<Compression> {
        match s {
            "zst" => Some(Compression::Zstd),
            "gzip" => Some(Compression::Gz),
            _ => s.parse().ok(),
        }
    }

    /// File name extension of compressed output (`zstd` → `zst`).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => "zst",
            other => other.as_str(),
        }
    }

    pub fn is_none(self) -> bool {
        self == Compression::None
    }
}

impl OutputFormat {
    /// The default `OutputExtension=` of the format.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Confext
            | OutputFormat::Disk
            | OutputFormat::Esp
            | OutputFormat::Portable
            | OutputFormat::Sysext => "raw",
            OutputFormat::Cpio => "cpio",
            OutputFormat::Tar => "tar",
            OutputFormat::Uki | OutputFormat::Addon => "efi",
            _ => "",
        }
    }

    /// Formats whose output file gets compressed as a whole (the compression
    /// suffix is added to the file name).
    pub fn use_outer_compression(self) -> bool {
        matches!(
            self,
            OutputFormat::Tar
                | OutputFormat::Cpio
                | OutputFormat::Disk
                | OutputFormat::Sysext
                | OutputFormat::Confext
                | OutputFormat::Portable
        )
    }

    pub fn is_extension_image(self) -> bool {
        matches!(self, OutputFormat::Sysext | OutputFormat::Confext | OutputFormat::Addon)
    }

    pub fn is_extension_or_portable_image(self) -> bool {
        self.is_extension_image() || self == OutputFormat::Portable
    }
}

impl Architecture {
    /// Map a `uname -m` machine name to an architecture.
    pub fn from_uname(machine: &str) -> Option<Architecture> {
        use Architecture::*;
        Some(match machine {
            "aarch64" | "aarch64_be" => Arm64,
            "armv8l" | "armv8b" | "armv7ml" | "armv7mb" | "armv7l" | "armv7b" | "armv6l" | "armv6b" | "armv5tl"
            | "armv5tel" | "armv5tejl" | "armv5tejb" | "armv5teb" | "armv5tb" | "armv4tl" | "armv4tb" | "armv4l"
            | "armv4b" => Arm,
            "alpha" => Alpha,
            "arc" | "arceb" => Arc,
            "x86_64" => X86_64,
            "i686" | "i586" | "i486" | "i386" => X86,
            "ia64" => Ia64,
            "parisc64" | "parisc" => Parisc,
            "loongarch64" => Loongarch64,
            "mips64" => Mips64Le,
            "mips" => MipsLe,
            "ppc64le" => Ppc64Le,
            "ppc64" => Ppc64,
            "ppc" => Ppc,
            "riscv64" | "riscv" => Riscv64,
            "riscv32" => Riscv32,
            "s390x" => S390x,
            "s390" => S390,
            "tilegx" => Tilegx,
            _ => return None,
        })
    }

    /// The architecture this binary runs on.
    pub fn native() -> Architecture {
        let machine = crate::host::uname_machine();
        Architecture::from_uname(&machine).unwrap_or(Architecture::X86_64)
    }

    /// UEFI architecture name, if the architecture has UEFI.
    pub fn to_efi(self) -> Option<&'static str> {
        use Architecture::*;
        Some(match self {
            X86 => "ia32",
            X86_64 => "x64",
            Arm => "arm",
            Arm64 => "aa64",
            Riscv32 => "riscv32",
            Riscv64 => "riscv64",
            Loongarch64 => "loongarch64",
            _ => return None,
        })
    }

    pub fn to_qemu(self) -> Option<&'static str> {
        use Architecture::*;
        Some(match self {
            Alpha => "alpha",
            Arm => "arm",
            Arm64 => "aarch64",
            Loongarch64 => "loongarch64",
            Mips64Le | MipsLe => "mips",
            Parisc => "hppa",
            Ppc => "ppc",
            Ppc64 | Ppc64Le => "ppc64",
            Riscv32 => "riscv32",
            Riscv64 => "riscv64",
            S390x => "s390x",
            X86 => "i386",
            X86_64 => "x86_64",
            _ => return None,
        })
    }

    pub fn is_x86_variant(self) -> bool {
        matches!(self, Architecture::X86 | Architecture::X86_64)
    }

    pub fn is_arm_variant(self) -> bool {
        matches!(self, Architecture::Arm | Architecture::Arm64)
    }
}

impl Distribution {
    pub fn is_apt_distribution(self) -> bool {
        matches!(self, Distribution::Debian | Distribution::Ubuntu | Distribution::Kali)
    }

    pub fn is_rpm_distribution(self) -> bool {
        use Distribution::*;
        matches!(self, Azure | Fedora | Opensuse | Mageia | Centos | Rhel | RhelUbi | Openmandriva | Rocky | Alma)
    }

    pub fn is_centos_variant(self) -> bool {
        use Distribution::*;
        matches!(self, Centos | Alma | Rocky | Rhel | RhelUbi)
    }
}

impl Feature {
    pub fn from_bool(b: bool) -> Feature {
        if b {
            Feature::Enabled
        } else {
            Feature::Disabled
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_value() {
        for d in Distribution::ALL {
            assert_eq!(d.as_str().parse::<Distribution>().unwrap(), *d);
        }
        for a in Architecture::ALL {
            assert_eq!(a.as_str().parse::<Architecture>().unwrap(), *a);
        }
        assert!("x86_64".parse::<Architecture>().is_err());
    }

    #[test]
    fn compression_names_and_extensions() {
        assert_eq!(Compression::from_name("zst"), Some(Compression::Zstd));
        assert_eq!(Compression::from_name("gzip"), Some(Compression::Gz));
        assert_eq!(Compression::from_name("zstd").map(|c| c.extension()), Some("zst"));
        assert_eq!(Compression::from_name("xz").map(|c| c.extension()), Some("xz"));
        assert_eq!(Compression::from_name("yes"), None);
    }

    #[test]
    fn uname_mapping() {
        assert_eq!(Architecture::from_uname("x86_64"), Some(Architecture::X86_64));
        assert_eq!(Architecture::from_uname("armv7l"), Some(Architecture::Arm));
        assert_eq!(Architecture::from_uname("riscv"), Some(Architecture::Riscv64));
        assert_eq!(Architecture::from_uname("sparc"), None);
    }
}
