//! GPT partition tables and the partition types of the Discoverable Partitions Specification.
//!
//! [`PartitionType`] resolves the names repart.d definitions use (`root`, `usr-verity`,
//! `root-arm64`, `esp`, a literal UUID, …) to type UUIDs and back. [`write`] lays down a
//! protective MBR, the primary and the backup GPT for a set of [`Entry`]s the way libfdisk does
//! for a new label (128 entries, first usable LBA at 1 MiB), and [`read`] reads one back.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use uuid::{uuid, Uuid};

/// Bytes to reserve for the GPT structures of a new disk: 1 MiB in front (protective MBR, header,
/// entries, alignment) and the backup entries and header at the end.
pub const METADATA_SIZE: u64 = 1044 * 1024;

/// The GPT "GUID:59" attribute: grow the filesystem to the partition on first mount.
pub const FLAG_GROWFS: u64 = 1 << 59;
/// The GPT "GUID:60" attribute: mount read-only.
pub const FLAG_READ_ONLY: u64 = 1 << 60;
/// The GPT "GUID:63" attribute: do not mount automatically.
pub const FLAG_NO_AUTO: u64 = 1 << 63;

/// The type UUID of the BIOS boot partition grub embeds itself into.
pub const BIOS_BOOT: Uuid = uuid!("21686148-6449-6e6f-744e-656564454649");

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("I/O error on the partition table: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid partition table: {0}")]
    Invalid(String),
}

/// What a partition is for, as the Discoverable Partitions Specification names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Designator {
    Root,
    Usr,
    Home,
    Srv,
    Esp,
    Xbootldr,
    Swap,
    RootVerity,
    UsrVerity,
    RootVeritySig,
    UsrVeritySig,
    Tmp,
    Var,
}

impl Designator {
    pub fn name(self) -> &'static str {
        match self {
            Designator::Root => "root",
            Designator::Usr => "usr",
            Designator::Home => "home",
            Designator::Srv => "srv",
            Designator::Esp => "esp",
            Designator::Xbootldr => "xbootldr",
            Designator::Swap => "swap",
            Designator::RootVerity => "root-verity",
            Designator::UsrVerity => "usr-verity",
            Designator::RootVeritySig => "root-verity-sig",
            Designator::UsrVeritySig => "usr-verity-sig",
            Designator::Tmp => "tmp",
            Designator::Var => "var",
        }
    }

    /// Where a partition of this kind is mounted (directories relative to the root).
    pub fn mountpoints(self) -> &'static [&'static str] {
        match self {
            Designator::Root => &["/"],
            Designator::Usr => &["/usr"],
            Designator::Home => &["/home"],
            Designator::Srv => &["/srv"],
            Designator::Esp => &["/efi", "/boot"],
            Designator::Xbootldr => &["/boot"],
            Designator::Tmp => &["/var/tmp"],
            Designator::Var => &["/var"],
            _ => &[],
        }
    }

    pub fn knows_read_only(self) -> bool {
        use Designator::*;
        matches!(self, Root | Usr | RootVerity | UsrVerity | Home | Srv | Var | Tmp | Xbootldr)
    }

    pub fn knows_growfs(self) -> bool {
        use Designator::*;
        matches!(self, Root | Usr | Home | Srv | Var | Tmp | Xbootldr)
    }

    pub fn knows_no_auto(self) -> bool {
        use Designator::*;
        matches!(self, Root | RootVerity | Usr | UsrVerity | Home | Srv | Var | Tmp | Xbootldr | Swap)
    }

    pub fn has_filesystem(self) -> bool {
        use Designator::*;
        matches!(self, Root | Usr | Home | Srv | Esp | Xbootldr | Tmp | Var)
    }

    pub fn is_verity_sig(self) -> bool {
        matches!(self, Designator::RootVeritySig | Designator::UsrVeritySig)
    }
}

/// A GPT partition type: its UUID and, when it is a known one, its canonical name, architecture
/// and designator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionType {
    pub uuid: Uuid,
    pub name: Option<&'static str>,
    pub arch: Option<&'static str>,
    pub designator: Option<Designator>,
}

struct ArchTypes {
    arch: &'static str,
    aliases: &'static [&'static str],
    root: Uuid,
    root_verity: Uuid,
    root_verity_sig: Uuid,
    usr: Uuid,
    usr_verity: Uuid,
    usr_verity_sig: Uuid,
}

// The architecture-specific types of the specification, canonical architecture names first.
const ARCH_TYPES: &[ArchTypes] = &[
    ArchTypes {
        arch: "alpha",
        aliases: &[],
        root: uuid!("6523f8ae-3eb1-4e2a-a05a-18b695ae656f"),
        root_verity: uuid!("fc56d9e9-e6e5-4c06-be32-e74407ce09a5"),
        root_verity_sig: uuid!("d46495b7-a053-414f-80f7-700c99921ef8"),
        usr: uuid!("e18cf08c-33ec-4c0d-8246-c6c6fb3da024"),
        usr_verity: uuid!("8cce0d25-c0d0-4a44-bd87-46331bf1df67"),
        usr_verity_sig: uuid!("5c6e1c76-076a-457a-a0fe-f3b4cd21ce6e"),
    },
    ArchTypes {
        arch: "arc",
        aliases: &[],
        root: uuid!("d27f46ed-2919-4cb8-bd25-9531f3c16534"),
        root_verity: uuid!("24b2d975-0f97-4521-afa1-cd531e421b8d"),
        root_verity_sig: uuid!("143a70ba-cbd3-4f06-919f-6c05683a78bc"),
        usr: uuid!("7978a683-6316-4922-bbee-38bff5a2fecc"),
        usr_verity: uuid!("fca0598c-d880-4591-8c16-4eda05c7347c"),
        usr_verity_sig: uuid!("94f9a9a1-9971-427a-a400-50cb297f0f35"),
    },
    ArchTypes {
        arch: "arm",
        aliases: &["armv7l"],
        root: uuid!("69dad710-2ce4-4e3c-b16c-21a1d49abed3"),
        root_verity: uuid!("7386cdf2-203c-47a9-a498-f2ecce45a2d6"),
        root_verity_sig: uuid!("42b0455f-eb11-491d-98d3-56145ba9d037"),
        usr: uuid!("7d0359a3-02b3-4f0a-865c-654403e70625"),
        usr_verity: uuid!("c215d751-7bcd-4649-be90-6627490a4c05"),
        usr_verity_sig: uuid!("d7ff812f-37d1-4902-a810-d76ba57b975a"),
    },
    ArchTypes {
        arch: "arm64",
        aliases: &["aarch64"],
        root: uuid!("b921b045-1df0-41c3-af44-4c6f280d3fae"),
        root_verity: uuid!("df3300ce-d69f-4c92-978c-9bfb0f38d820"),
        root_verity_sig: uuid!("6db69de6-29f4-4758-a7a5-962190f00ce3"),
        usr: uuid!("b0e01050-ee5f-4390-949a-9101b17104e9"),
        usr_verity: uuid!("6e11a4e7-fbca-4ded-b9e9-e1a512bb664e"),
        usr_verity_sig: uuid!("c23ce4ff-44bd-4b00-b2d4-b41b3419e02a"),
    },
    ArchTypes {
        arch: "ia64",
        aliases: &[],
        root: uuid!("993d8d3d-f80e-4225-855a-9daf8ed7ea97"),
        root_verity: uuid!("86ed10d5-b607-45bb-8957-d350f23d0571"),
        root_verity_sig: uuid!("e98b36ee-32ba-4882-9b12-0ce14655f46a"),
        usr: uuid!("4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea"),
        usr_verity: uuid!("6a491e03-3be7-4545-8e38-83320e0ea880"),
        usr_verity_sig: uuid!("8de58bc2-2a43-460d-b14e-a76e4a17b47f"),
    },
    ArchTypes {
        arch: "loongarch64",
        aliases: &["loong64"],
        root: uuid!("77055800-792c-4f94-b39a-98c91b762bb6"),
        root_verity: uuid!("f3393b22-e9af-4613-a948-9d3bfbd0c535"),
        root_verity_sig: uuid!("5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0"),
        usr: uuid!("e611c702-575c-4cbe-9a46-434fa0bf7e3f"),
        usr_verity: uuid!("f46b2c26-59ae-48f0-9106-c50ed47f673d"),
        usr_verity_sig: uuid!("b024f315-d330-444c-8461-44bbde524e99"),
    },
    ArchTypes {
        arch: "mips",
        aliases: &[],
        root: uuid!("e9434544-6e2c-47cc-bae2-12d6deafb44c"),
        root_verity: uuid!("7a430799-f711-4c7e-8e5b-1d685bd48607"),
        root_verity_sig: uuid!("bba210a2-9c5d-45ee-9e87-ff2ccbd002d0"),
        usr: uuid!("773b2abc-2a99-4398-8bf5-03baac40d02b"),
        usr_verity: uuid!("6e5a1bc8-d223-49b7-bca8-37a5fcceb996"),
        usr_verity_sig: uuid!("97ae158d-f216-497b-8057-f7f905770f54"),
    },
    ArchTypes {
        arch: "mips64",
        aliases: &[],
        root: uuid!("d113af76-80ef-41b4-bdb6-0cff4d3d4a25"),
        root_verity: uuid!("579536f8-6a33-4055-a95a-df2d5e2c42a8"),
        root_verity_sig: uuid!("43ce94d4-0f3d-4999-8250-b9deafd98e6e"),
        usr: uuid!("57e13958-7331-4365-8e6e-35eeee17c61b"),
        usr_verity: uuid!("81cf9d90-7458-4df4-8dcf-c8a3a404f09b"),
        usr_verity_sig: uuid!("05816ce2-dd40-4ac6-a61d-37d32dc1ba7d"),
    },
    ArchTypes {
        arch: "mips-le",
        aliases: &["mipsel"],
        root: uuid!("37c58c8a-d913-4156-a25f-48b1b64e07f0"),
        root_verity: uuid!("d7d150d2-2a04-4a33-8f12-16651205ff7b"),
        root_verity_sig: uuid!("c919cc1f-4456-4eff-918c-f75e94525ca5"),
        usr: uuid!("0f4868e9-9952-4706-979f-3ed3a473e947"),
        usr_verity: uuid!("46b98d8d-b55c-4e8f-aab3-37fca7f80752"),
        usr_verity_sig: uuid!("3e23ca0b-a4bc-4b4e-8087-5ab6a26aa8a9"),
    },
    ArchTypes {
        arch: "mips64-le",
        aliases: &["mips64el"],
        root: uuid!("700bda43-7a34-4507-b179-eeb93d7a7ca3"),
        root_verity: uuid!("16b417f8-3e06-4f57-8dd2-9b5232f41aa6"),
        root_verity_sig: uuid!("904e58ef-5c65-4a31-9c57-6af5fc7c5de7"),
        usr: uuid!("c97c1f32-ba06-40b4-9f22-236061b08aa8"),
        usr_verity: uuid!("3c3d61fe-b5f3-414d-bb71-8739a694a4ef"),
        usr_verity_sig: uuid!("f2c2c7ee-adcc-4351-b5c6-ee9816b66e16"),
    },
    ArchTypes {
        arch: "parisc",
        aliases: &["hppa"],
        root: uuid!("1aacdb3b-5444-4138-bd9e-e5c2239b2346"),
        root_verity: uuid!("d212a430-fbc5-49f9-a983-a7feef2b8d0e"),
        root_verity_sig: uuid!("15de6170-65d3-431c-916e-b0dcd8393f25"),
        usr: uuid!("dc4a4480-6917-4262-a4ec-db9384949f25"),
        usr_verity: uuid!("5843d618-ec37-48d7-9f12-cea8e08768b2"),
        usr_verity_sig: uuid!("450dd7d1-3224-45ec-9cf2-a43a346d71ee"),
    },
    ArchTypes {
        arch: "ppc",
        aliases: &[],
        root: uuid!("1de3f1ef-fa98-47b5-8dcd-4a860a654d78"),
        root_verity: uuid!("98cfe649-1588-46dc-b2f0-add147424925"),
        root_verity_sig: uuid!("1b31b5aa-add9-463a-b2ed-bd467fc857e7"),
        usr: uuid!("7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf"),
        usr_verity: uuid!("df765d00-270e-49e5-bc75-f47bb2118b09"),
        usr_verity_sig: uuid!("7007891d-d371-4a80-86a4-5cb875b9302e"),
    },
    ArchTypes {
        arch: "ppc64",
        aliases: &[],
        root: uuid!("912ade1d-a839-4913-8964-a10eee08fbd2"),
        root_verity: uuid!("9225a9a3-3c19-4d89-b4f6-eeff88f17631"),
        root_verity_sig: uuid!("f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf"),
        usr: uuid!("2c9739e2-f068-46b3-9fd0-01c5a9afbcca"),
        usr_verity: uuid!("bdb528a5-a259-475f-a87d-da53fa736a07"),
        usr_verity_sig: uuid!("0b888863-d7f8-4d9e-9766-239fce4d58af"),
    },
    ArchTypes {
        arch: "ppc64-le",
        aliases: &["ppc64le", "ppc64el"],
        root: uuid!("c31c45e6-3f39-412e-80fb-4809c4980599"),
        root_verity: uuid!("906bd944-4589-4aae-a4e4-dd983917446a"),
        root_verity_sig: uuid!("d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6"),
        usr: uuid!("15bb03af-77e7-4d4a-b12b-c0d084f7491c"),
        usr_verity: uuid!("ee2b9983-21e8-4153-86d9-b6901a54d1ce"),
        usr_verity_sig: uuid!("c8bfbd1e-268e-4521-8bba-bf314c399557"),
    },
    ArchTypes {
        arch: "riscv32",
        aliases: &[],
        root: uuid!("60d5a7fe-8e7d-435c-b714-3dd8162144e1"),
        root_verity: uuid!("ae0253be-1167-4007-ac68-43926c14c5de"),
        root_verity_sig: uuid!("3a112a75-8729-4380-b4cf-764d79934448"),
        usr: uuid!("b933fb22-5c3f-4f91-af90-e2bb0fa50702"),
        usr_verity: uuid!("cb1ee4e3-8cd0-4136-a0a4-aa61a32e8730"),
        usr_verity_sig: uuid!("c3836a13-3137-45ba-b583-b16c50fe5eb4"),
    },
    ArchTypes {
        arch: "riscv64",
        aliases: &[],
        root: uuid!("72ec70a6-cf74-40e6-bd49-4bda08e8f224"),
        root_verity: uuid!("b6ed5582-440b-4209-b8da-5ff7c419ea3d"),
        root_verity_sig: uuid!("efe0f087-ea8d-4469-821a-4c2a96a8386a"),
        usr: uuid!("beaec34b-8442-439b-a40b-984381ed097d"),
        usr_verity: uuid!("8f1056be-9b05-47c4-81d6-be53128e5b54"),
        usr_verity_sig: uuid!("d2f9000a-7a18-453f-b5cd-4d32f77a7b32"),
    },
    ArchTypes {
        arch: "s390",
        aliases: &[],
        root: uuid!("08a7acea-624c-4a20-91e8-6e0fa67d23f9"),
        root_verity: uuid!("7ac63b47-b25c-463b-8df8-b4a94e6c90e1"),
        root_verity_sig: uuid!("3482388e-4254-435a-a241-766a065f9960"),
        usr: uuid!("cd0f869b-d0fb-4ca0-b141-9ea87cc78d66"),
        usr_verity: uuid!("b663c618-e7bc-4d6d-90aa-11b756bb1797"),
        usr_verity_sig: uuid!("17440e4f-a8d0-467f-a46e-3912ae6ef2c5"),
    },
    ArchTypes {
        arch: "s390x",
        aliases: &[],
        root: uuid!("5eead9a9-fe09-4a1e-a1d7-520d00531306"),
        root_verity: uuid!("b325bfbe-c7be-4ab8-8357-139e652d2f6b"),
        root_verity_sig: uuid!("c80187a5-73a3-491a-901a-017c3fa953e9"),
        usr: uuid!("8a4f5770-50aa-4ed3-874a-99b710db6fea"),
        usr_verity: uuid!("31741cc4-1a2a-4111-a581-e00b447d2d06"),
        usr_verity_sig: uuid!("3f324816-667b-46ae-86ee-9b0c0c6c11b4"),
    },
    ArchTypes {
        arch: "tilegx",
        aliases: &[],
        root: uuid!("c50cdd70-3862-4cc3-90e1-809a8c93ee2c"),
        root_verity: uuid!("966061ec-28e4-4b2e-b4a5-1f0a825a1d84"),
        root_verity_sig: uuid!("b3671439-97b0-4a53-90f7-2d5a8f3ad47b"),
        usr: uuid!("55497029-c7c1-44cc-aa39-815ed1558630"),
        usr_verity: uuid!("2fb4bf56-07fa-42da-8132-6b139f2026ae"),
        usr_verity_sig: uuid!("4ede75e2-6ccc-4cc8-b9c7-70334b087510"),
    },
    ArchTypes {
        arch: "x86",
        aliases: &["i386", "i486", "i586", "i686"],
        root: uuid!("44479540-f297-41b2-9af7-d131d5f0458a"),
        root_verity: uuid!("d13c5d3b-b5d1-422a-b29f-9454fdc89d76"),
        root_verity_sig: uuid!("5996fc05-109c-48de-808b-23fa0830b676"),
        usr: uuid!("75250d76-8cc6-458e-bd66-bd47cc81a812"),
        usr_verity: uuid!("8f461b0d-14ee-4e81-9aa9-049b6fb97abd"),
        usr_verity_sig: uuid!("974a71c0-de41-43c3-be5d-5c5ccd1ad2c0"),
    },
    ArchTypes {
        arch: "x86-64",
        aliases: &["x86_64", "amd64"],
        root: uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        root_verity: uuid!("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
        root_verity_sig: uuid!("41092b05-9fc8-4523-994f-2def0408b176"),
        usr: uuid!("8484680c-9521-48c6-9c11-b0720656f69e"),
        usr_verity: uuid!("77ff5f63-e7b6-4633-acf4-1565b864c0e6"),
        usr_verity_sig: uuid!("e7bb33fb-06cf-4e81-8273-e543b413e2e2"),
    },
];

const GENERIC_TYPES: &[(&str, Uuid, Option<Designator>)] = &[
    ("esp", uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"), Some(Designator::Esp)),
    ("xbootldr", uuid!("bc13c2ff-59e6-4262-a352-b275fd6f7172"), Some(Designator::Xbootldr)),
    ("swap", uuid!("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"), Some(Designator::Swap)),
    ("home", uuid!("933ac7e1-2eb4-4f13-b844-0e14e2aef915"), Some(Designator::Home)),
    ("srv", uuid!("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"), Some(Designator::Srv)),
    ("var", uuid!("4d21b016-b534-45c2-a9fb-5c16e091fd2d"), Some(Designator::Var)),
    ("tmp", uuid!("7ec6f557-3bc5-4aca-b293-16ef5df639d1"), Some(Designator::Tmp)),
    ("user-home", uuid!("773f91ef-66d4-49b5-bd83-d683bf40ad16"), None),
    ("linux-generic", uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4"), None),
];

const ARCH_DESIGNATORS: [(Designator, &str); 6] = [
    (Designator::Root, "root"),
    (Designator::RootVerity, "root-verity"),
    (Designator::RootVeritySig, "root-verity-sig"),
    (Designator::Usr, "usr"),
    (Designator::UsrVerity, "usr-verity"),
    (Designator::UsrVeritySig, "usr-verity-sig"),
];

impl ArchTypes {
    fn get(&self, d: Designator) -> Option<Uuid> {
        Some(match d {
            Designator::Root => self.root,
            Designator::RootVerity => self.root_verity,
            Designator::RootVeritySig => self.root_verity_sig,
            Designator::Usr => self.usr,
            Designator::UsrVerity => self.usr_verity,
            Designator::UsrVeritySig => self.usr_verity_sig,
            _ => return None,
        })
    }
}

fn arch_entry(arch: &str) -> Option<&'static ArchTypes> {
    ARCH_TYPES.iter().find(|a| a.arch == arch).or_else(|| ARCH_TYPES.iter().find(|a| a.aliases.contains(&arch)))
}

/// Canonical names of architecture-specific types, e.g. `root-x86-64-verity`.
fn arch_type_name(d: Designator, arch: &'static str) -> String {
    match d {
        Designator::Root => format!("root-{arch}"),
        Designator::RootVerity => format!("root-{arch}-verity"),
        Designator::RootVeritySig => format!("root-{arch}-verity-sig"),
        Designator::Usr => format!("usr-{arch}"),
        Designator::UsrVerity => format!("usr-{arch}-verity"),
        Designator::UsrVeritySig => format!("usr-{arch}-verity-sig"),
        _ => d.name().to_string(),
    }
}

impl PartitionType {
    /// The type for a UUID; unknown UUIDs give a type without name or designator.
    pub fn from_uuid(uuid: Uuid) -> PartitionType {
        for a in ARCH_TYPES {
            for (d, _) in ARCH_DESIGNATORS {
                if a.get(d) == Some(uuid) {
                    return PartitionType { uuid, name: None, arch: Some(a.arch), designator: Some(d) };
                }
            }
        }
        for (name, u, d) in GENERIC_TYPES {
            if *u == uuid {
                return PartitionType { uuid, name: Some(name), arch: None, designator: *d };
            }
        }
        PartitionType { uuid, name: None, arch: None, designator: None }
    }

    /// The type an architecture-specific designator has on `arch`.
    pub fn for_arch(designator: Designator, arch: &str) -> Option<PartitionType> {
        let a = arch_entry(arch)?;
        a.get(designator).map(PartitionType::from_uuid)
    }

    /// Parses a repart.d `Type=` value: a type name (`root`, `usr-verity-sig`, `root-arm64`,
    /// `esp`, …; the short architecture-less names mean `native_arch`) or a UUID.
    pub fn parse(s: &str, native_arch: &str) -> Option<PartitionType> {
        for a in ARCH_TYPES {
            for name in std::iter::once(&a.arch).chain(a.aliases.iter()) {
                for (d, _) in ARCH_DESIGNATORS {
                    if s == arch_type_name(d, name) {
                        return a.get(d).map(PartitionType::from_uuid);
                    }
                }
            }
        }
        if let Some((d, _)) = ARCH_DESIGNATORS.iter().find(|(_, n)| *n == s) {
            return PartitionType::for_arch(*d, native_arch);
        }
        if let Some((_, u, _)) = GENERIC_TYPES.iter().find(|(n, _, _)| *n == s) {
            return Some(PartitionType::from_uuid(*u));
        }
        parse_id128(s).map(PartitionType::from_uuid)
    }

    /// The same kind of partition for another architecture (repart's `--architecture=`).
    pub fn override_arch(self, arch: &str) -> PartitionType {
        match (self.designator, self.arch) {
            (Some(d), Some(_)) => PartitionType::for_arch(d, arch).unwrap_or(self),
            _ => self,
        }
    }

    /// The name repart prints for the type: the canonical name, or the UUID.
    pub fn display_name(&self) -> String {
        match (self.name, self.arch, self.designator) {
            (Some(n), _, _) => n.to_string(),
            (None, Some(a), Some(d)) => arch_type_name(d, a),
            _ => self.uuid.hyphenated().to_string(),
        }
    }
}

/// Parses a 128-bit ID either as a UUID with dashes or as 32 hex digits.
pub fn parse_id128(s: &str) -> Option<Uuid> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Uuid::try_parse(s).ok();
    }
    if s.len() == 36 {
        return Uuid::try_parse(s).ok();
    }
    None
}

/// One partition of a GPT, with offsets in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index in the partition entry array (0-based; the kernel's partition number minus one).
    pub partno: u32,
    pub type_uuid: Uuid,
    pub uuid: Uuid,
    pub offset: u64,
    pub size: u64,
    pub label: String,
    pub flags: u64,
}

/// The first byte partitions may use on a new disk (libfdisk aligns it to 1 MiB).
pub fn first_usable_byte(_sector_size: u64) -> u64 {
    1024 * 1024
}

/// The end (exclusive) of the usable area on a disk of `disk_size` bytes.
pub fn last_usable_end(disk_size: u64, sector_size: u64) -> u64 {
    let entries = (128 * 128u64).div_ceil(sector_size);
    (disk_size / sector_size - entries - 1) * sector_size
}

/// Writes a protective MBR and primary and backup GPT headers describing `entries` into `file`,
/// which already has its final size.
pub fn write(file: &mut File, sector_size: u64, disk_uuid: Uuid, entries: &[Entry]) -> Result<(), GptError> {
    if !(sector_size.is_power_of_two() && (512..=4096).contains(&sector_size)) {
        return Err(GptError::Invalid(format!("unsupported sector size {sector_size}")));
    }
    let disk_size = file.seek(SeekFrom::End(0))?;
    let mut gpt = gptman::GPT::new_from(file, sector_size, disk_uuid.to_bytes_le())
        .map_err(|e| GptError::Invalid(e.to_string()))?;
    gpt.header.first_usable_lba = first_usable_byte(sector_size) / sector_size;
    gpt.align = 1;
    for e in entries {
        if e.offset % sector_size != 0 || e.size % sector_size != 0 || e.size == 0 {
            return Err(GptError::Invalid(format!("partition {} is not sector aligned", e.partno + 1)));
        }
        if e.partno >= 128 {
            return Err(GptError::Invalid(format!("partition number {} out of range", e.partno + 1)));
        }
        if e.offset < first_usable_byte(sector_size) || e.offset + e.size > last_usable_end(disk_size, sector_size) {
            return Err(GptError::Invalid(format!("partition {} does not fit the disk", e.partno + 1)));
        }
        let name = utf16_label(&e.label)?;
        gpt[e.partno + 1] = gptman::GPTPartitionEntry {
            partition_type_guid: e.type_uuid.to_bytes_le(),
            unique_partition_guid: e.uuid.to_bytes_le(),
            starting_lba: e.offset / sector_size,
            ending_lba: (e.offset + e.size) / sector_size - 1,
            attribute_bits: e.flags,
            partition_name: name.as_str().into(),
        };
    }
    // Zero the areas the headers and entry arrays go to, so nothing stale survives.
    let zero_front = vec![0u8; (2 * sector_size + 128 * 128) as usize];
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&zero_front)?;
    let back = disk_size - sector_size - (128 * 128u64).div_ceil(sector_size) * sector_size;
    file.seek(SeekFrom::Start(back))?;
    file.write_all(&vec![0u8; (disk_size - back) as usize])?;

    gptman::GPT::write_protective_mbr_into(file, sector_size).map_err(|e| GptError::Invalid(e.to_string()))?;
    gpt.write_into(file).map_err(|e| GptError::Invalid(e.to_string()))?;
    Ok(())
}

fn utf16_label(label: &str) -> Result<String, GptError> {
    if label.encode_utf16().count() > 36 {
        return Err(GptError::Invalid(format!("partition label '{label}' is longer than 36 UTF-16 characters")));
    }
    Ok(label.to_string())
}

/// Reads the GPT of an image: the disk UUID and the used entries in partition number order.
pub fn read(file: &mut File, sector_size: u64) -> Result<(Uuid, Vec<Entry>), GptError> {
    let gpt = gptman::GPT::read_from(file, sector_size).map_err(|e| GptError::Invalid(e.to_string()))?;
    let mut out = Vec::new();
    for (i, p) in gpt.iter() {
        if !p.is_used() {
            continue;
        }
        out.push(Entry {
            partno: i - 1,
            type_uuid: Uuid::from_bytes_le(p.partition_type_guid),
            uuid: Uuid::from_bytes_le(p.unique_partition_guid),
            offset: p.starting_lba * sector_size,
            size: (p.ending_lba + 1 - p.starting_lba) * sector_size,
            label: p.partition_name.as_str().to_string(),
            flags: p.attribute_bits,
        });
    }
    Ok((Uuid::from_bytes_le(gpt.header.disk_guid), out))
}

/// Finds the sector size of the GPT on an image (512 or 4096) by looking for the header.
pub fn probe_sector_size(file: &mut File) -> Result<u64, GptError> {
    use std::io::Read;
    for ss in [512u64, 4096, 1024, 2048] {
        let mut sig = [0u8; 8];
        file.seek(SeekFrom::Start(ss))?;
        if file.read_exact(&mut sig).is_ok() && &sig == b"EFI PART" {
            return Ok(ss);
        }
    }
    Err(GptError::Invalid("no GPT header found".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_names() {
        let cases = [
            ("root", "x86-64", Some("root-x86-64"), Some(Designator::Root)),
            ("root-verity", "x86-64", Some("root-x86-64-verity"), Some(Designator::RootVerity)),
            ("usr-verity-sig", "arm64", Some("usr-arm64-verity-sig"), Some(Designator::UsrVeritySig)),
            ("root-aarch64", "x86-64", Some("root-arm64"), Some(Designator::Root)),
            ("root-amd64", "arm64", Some("root-x86-64"), Some(Designator::Root)),
            ("root-x86_64-verity", "arm64", Some("root-x86-64-verity"), Some(Designator::RootVerity)),
            ("esp", "x86-64", Some("esp"), Some(Designator::Esp)),
            ("linux-generic", "x86-64", Some("linux-generic"), None),
            ("c12a7328-f81f-11d2-ba4b-00a0c93ec93b", "x86-64", Some("esp"), Some(Designator::Esp)),
            ("21686148-6449-6e6f-744e-656564454649", "x86-64", Some("21686148-6449-6e6f-744e-656564454649"), None),
            ("21686148644965f6e744e656564454649", "x86-64", None, None),
            ("rooot", "x86-64", None, None),
        ];
        for (input, arch, name, designator) in cases {
            let t = PartitionType::parse(input, arch);
            assert_eq!(t.map(|t| t.display_name()), name.map(String::from), "{input}");
            if let Some(t) = t {
                assert_eq!(t.designator, designator, "{input}");
            }
        }
        let t = PartitionType::parse("root", "x86-64").unwrap();
        assert_eq!(t.uuid, uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"));
        assert_eq!(t.override_arch("arm64").display_name(), "root-arm64");
        assert_eq!(PartitionType::parse("esp", "x86-64").unwrap().override_arch("arm64").display_name(), "esp");
    }

    #[test]
    fn every_arch_has_distinct_types() {
        let mut seen = std::collections::HashSet::new();
        for a in ARCH_TYPES {
            if a.aliases.is_empty() || seen.insert(a.root) {
                for (d, _) in ARCH_DESIGNATORS {
                    let t = PartitionType::from_uuid(a.get(d).unwrap());
                    assert_eq!(t.designator, Some(d));
                }
            }
        }
    }

    #[test]
    fn write_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let mut f = File::options().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.set_len(64 * 1024 * 1024).unwrap();
        let entries = vec![
            Entry {
                partno: 0,
                type_uuid: uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
                uuid: uuid!("b2d552b0-45db-4678-b34f-066168609d1a"),
                offset: 1024 * 1024,
                size: 20 * 1024 * 1024,
                label: "esp".into(),
                flags: 0,
            },
            Entry {
                partno: 1,
                type_uuid: uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
                uuid: uuid!("9e90c9c3-c7e8-44f2-bf19-9ae2689de795"),
                offset: 21 * 1024 * 1024,
                size: 30 * 1024 * 1024,
                label: "root-x86-64".into(),
                flags: FLAG_GROWFS,
            },
        ];
        let disk = uuid!("6913f4b6-6690-4a57-a202-f1b53c56dbdf");
        write(&mut f, 512, disk, &entries).unwrap();
        assert_eq!(probe_sector_size(&mut f).unwrap(), 512);
        let (d, back) = read(&mut f, 512).unwrap();
        assert_eq!(d, disk);
        assert_eq!(back, entries);
    }

    #[test]
    fn writing_the_table_keeps_partition_data() {
        use std::os::unix::fs::FileExt;
        for ss in [512u64, 4096] {
            let mut f = tempfile::tempfile().unwrap();
            let disk = 4 * 1024 * 1024;
            f.set_len(disk).unwrap();
            let first = first_usable_byte(ss);
            let end = last_usable_end(disk, ss);
            f.write_all_at(b"first", first).unwrap();
            f.write_all_at(b"last!", end - 5).unwrap();
            let e = Entry {
                partno: 0,
                type_uuid: uuid!("0fc63daf-8483-4772-8e79-3d69d8477de4"),
                uuid: uuid!("9e90c9c3-c7e8-44f2-bf19-9ae2689de795"),
                offset: first,
                size: (end - first) / ss * ss,
                label: "x".into(),
                flags: 0,
            };
            write(&mut f, ss, Uuid::nil(), &[e]).unwrap();
            let mut buf = [0u8; 5];
            f.read_exact_at(&mut buf, first).unwrap();
            assert_eq!(&buf, b"first", "sector size {ss}");
            f.read_exact_at(&mut buf, end - 5).unwrap();
            assert_eq!(&buf, b"last!", "sector size {ss}");
        }
    }

    #[test]
    fn rejects_partitions_outside_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = tempfile::tempfile_in(dir.path()).unwrap();
        f.set_len(8 * 1024 * 1024).unwrap();
        let e = Entry {
            partno: 0,
            type_uuid: Uuid::nil(),
            uuid: uuid!("9e90c9c3-c7e8-44f2-bf19-9ae2689de795"),
            offset: 1024 * 1024,
            size: 8 * 1024 * 1024,
            label: String::new(),
            flags: 0,
        };
        assert!(write(&mut f, 512, Uuid::nil(), &[e]).is_err());
    }
}
