//! The per-distribution facts the configuration engine needs to compute
//! defaults: default release, default filesystem (`%F`), which packages are
//! kernels (for the default-initrd decision) and the distribution used for a
//! default tools tree. Package-manager specifics live in `mkosi-distro`.

use crate::enums::Distribution;

impl Distribution {
    /// Release used when none is configured and the host runs a different distribution.
    pub fn default_release(self) -> &'static str {
        use Distribution::*;
        match self {
            Fedora => "rawhide",
            Debian => "testing",
            Kali => "kali-rolling",
            Ubuntu => "devel",
            Postmarketos => "edge",
            Arch => "rolling",
            Opensuse => "tumbleweed",
            Mageia => "cauldron",
            Centos | Rhel | RhelUbi | Rocky | Alma => "10",
            Openmandriva => "cooker",
            Azure => "3.0",
            Custom => "",
        }
    }

    /// Default root filesystem (the `%F` specifier).
    pub fn filesystem(self) -> &'static str {
        use Distribution::*;
        match self {
            Fedora | Opensuse => "btrfs",
            Centos | Rhel | RhelUbi | Rocky | Alma => "xfs",
            _ => "ext4",
        }
    }

    /// Distribution a default tools tree uses when the host runs `self`
    /// (`None` = the same distribution).
    pub fn default_tools_tree_distribution(self) -> Option<Distribution> {
        use Distribution::*;
        match self {
            Centos | Rhel | RhelUbi | Rocky | Alma => Some(Fedora),
            Kali => Some(Kali),
            Ubuntu => Some(Debian),
            Postmarketos => Some(Postmarketos),
            _ => None,
        }
    }

    /// Whether installing `package` installs a kernel.
    pub fn is_kernel_package(self, package: &str) -> bool {
        use Distribution::*;
        match self {
            Debian | Kali => package.starts_with("linux-image-"),
            Ubuntu => package.starts_with("linux-") && !package.starts_with("linux-tools-"),
            Fedora | Azure | Mageia | Openmandriva | Centos | Rhel | RhelUbi | Rocky | Alma => {
                matches!(package, "kernel" | "kernel-core")
            }
            Opensuse => matches!(package, "kernel-default" | "kernel-kvmsmall"),
            Arch => {
                matches!(package, "linux" | "linux-lts" | "linux-zen" | "linux-hardened" | "linux-rt" | "linux-rt-lts")
            }
            Postmarketos => {
                package.starts_with("linux-")
                    && !(package.ends_with("-doc") || package.ends_with("-dev") || package.ends_with("-manual"))
                    && !(package.starts_with("linux-tools-") || package.starts_with("linux-firmware-"))
                    && !matches!(package, "linux-timemachine" | "linux-headers" | "linux-apfs-rw-src")
            }
            Custom => false,
        }
    }

    /// Human readable name.
    pub fn pretty_name(self) -> &'static str {
        use Distribution::*;
        match self {
            Fedora => "Fedora Linux",
            Debian => "Debian",
            Kali => "Kali Linux",
            Ubuntu => "Ubuntu",
            Postmarketos => "postmarketOS",
            Arch => "Arch Linux",
            Opensuse => "openSUSE",
            Mageia => "Mageia",
            Centos => "CentOS",
            Rhel => "RHEL",
            RhelUbi => "RHEL UBI",
            Openmandriva => "OpenMandriva",
            Rocky => "Rocky Linux",
            Alma => "AlmaLinux",
            Azure => "Azure Linux",
            Custom => "Custom",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_packages() {
        let cases = [
            (Distribution::Debian, "linux-image-amd64", true),
            (Distribution::Debian, "linux-headers-amd64", false),
            (Distribution::Ubuntu, "linux-generic", true),
            (Distribution::Ubuntu, "linux-tools-common", false),
            (Distribution::Fedora, "kernel-core", true),
            (Distribution::Fedora, "kernel-devel", false),
            (Distribution::Opensuse, "kernel-default", true),
            (Distribution::Arch, "linux-lts", true),
            (Distribution::Arch, "linux-firmware", false),
            (Distribution::Postmarketos, "linux-postmarketos-lts", true),
            (Distribution::Postmarketos, "linux-lts-doc", false),
            (Distribution::Postmarketos, "linux-firmware-intel", false),
            (Distribution::Custom, "linux", false),
        ];
        for (d, p, want) in cases {
            assert_eq!(d.is_kernel_package(p), want, "{d} {p}");
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(Distribution::Rocky.default_release(), "10");
        assert_eq!(Distribution::Alma.filesystem(), "xfs");
        assert_eq!(Distribution::Ubuntu.default_tools_tree_distribution(), Some(Distribution::Debian));
        assert_eq!(Distribution::Debian.default_tools_tree_distribution(), None);
    }
}
