//! Every setting of mkosi, in upstream's order (which matters: default
//! paths are picked up in this order, and for settings sharing storage the
//! later declaration names the JSON key).

use super::{DictItem, Factory, Item, ListOpts, Matcher, Parser, PathOpts, Scope, Section, Setting, Split};
use crate::enums::*;

/// `CacheOnly=` values as upstream checks them (its alias `none` is not accepted).
const CACHE_ONLY_VALUES: &[&str] = &["always", "auto", "metadata", "never"];

#[rustfmt::skip]
pub static SETTINGS: &[Setting] = &[
    Setting::new("Include", Section::Include, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new().constants(&["mkosi-tools", "mkosi-initrd", "mkosi-vm", "mkosi-addon", "mkosi-obs"])), sort_packages: false, reset: false, globs: false }), "include")
        .short('I')
        .tools()
        .help("Parse another config file or config directory right after this assignment (CLI: after all CLI args, before mkosi.conf). Each inode parsed once per image."),
    Setting::new("Profiles", Section::Config, Parser::List(ListOpts { split: Split::Default, item: Item::Profile, sort_packages: false, reset: true, globs: false }), "profile")
        .matcher(Matcher::ListContains { profile: true })
        .scope(Scope::Inherit)
        .compat(&["Profile"])
        .tools()
        .nullable()
        .help("Enable profiles; mkosi.profiles/<name>/ and/or mkosi.profiles/<name>.conf are parsed after mkosi.conf.d. Exposed as $PROFILES."),
    Setting::new("Dependencies", Section::Config, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "dependency")
        .nullable()
        .help("Images to build before this one; for the main image it selects which mkosi.images/ subimages are built at all."),
    Setting::new("MinimumVersion", Section::Config, Parser::MinimumVersion, "minimum-version")
        .scope(Scope::Main)
        .nullable()
        .help("Abort unless the running mkosi is at least this version (or a git checkout descending from the commit). Highest value wins; empty keeps previous."),
    Setting::new("ConfigureScripts", Section::Config, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "configure-script")
        .paths(&["configure"])
        .nullable()
        .metavar("PATH")
        .help("Scripts that receive the config JSON on stdin and print modified JSON (only for build/shell/boot/vm)."),
    Setting::new("PassEnvironment", Section::Config, Parser::List(ListOpts { split: Split::Space, item: Item::Str, sort_packages: false, reset: true, globs: false }), "pass-environment")
        .scope(Scope::Main)
        .nullable()
        .metavar("NAME")
        .help("Names of Environment= variables that are also handed to subimages, default initrd and tools tree."),
    Setting::new("Distribution", Section::Distribution, Parser::Enum("Distribution", Distribution::VALUES), "distribution")
        .matcher(Matcher::Enum("Distribution", Distribution::VALUES))
        .factory(Factory::Distribution, &[])
        .scope(Scope::Universal)
        .short('d')
        .specifier('d')
        .choices(&["fedora", "debian", "kali", "ubuntu", "postmarketos", "arch", "opensuse", "mageia", "centos", "rhel", "rhel-ubi", "openmandriva", "rocky", "alma", "azure", "custom", ""])
        .help("Target distribution."),
    Setting::new("Release", Section::Distribution, Parser::Str, "release")
        .matcher(Matcher::Str)
        .factory(Factory::Release, &["Distribution"])
        .scope(Scope::Universal)
        .short('r')
        .specifier('r')
        .help("Target release/codename."),
    Setting::new("Architecture", Section::Distribution, Parser::Enum("Architecture", Architecture::VALUES), "architecture")
        .matcher(Matcher::Architecture)
        .factory(Factory::NativeArchitecture, &[])
        .scope(Scope::Universal)
        .specifier('a')
        .choices(&["alpha", "arc", "arm", "arm64", "ia64", "loongarch64", "mips-le", "mips64-le", "parisc", "ppc", "ppc64", "ppc64-le", "riscv32", "riscv64", "s390", "s390x", "tilegx", "x86", "x86-64", ""])
        .help("Target CPU architecture (foreign arch needs binfmt emulation)."),
    Setting::new("Mirror", Section::Distribution, Parser::Str, "mirror")
        .scope(Scope::Universal)
        .short('m')
        .nullable()
        .help("Base URL of the package mirror used during the build. (Repo config written into an apt image — when apt is installed — always uses the distro default mirror; rpm/pacman repo config is never written into the image.)"),
    Setting::new("Snapshot", Section::Distribution, Parser::Str, "snapshot")
        .scope(Scope::Universal)
        .paths(&["snapshot"])
        .read_text()
        .tools()
        .nullable()
        .help("Install from a dated archive snapshot; changes default mirror. Use latest-snapshot verb to obtain one."),
    Setting::new("LocalMirror", Section::Distribution, Parser::Str, "local-mirror")
        .scope(Scope::Universal)
        .tools()
        .nullable()
        .help("Single flat repository used only during the build (image keeps Mirror=/defaults)."),
    Setting::new("RepositoryKeyCheck", Section::Distribution, Parser::Bool, "repository-key-check")
        .default_json("true")
        .scope(Scope::Multiversal)
        .metavar("BOOL")
        .help("Verify repository/package signatures."),
    Setting::new("RepositoryKeyFetch", Section::Distribution, Parser::Bool, "repository-key-fetch")
        .factory(Factory::RepositoryKeyFetch, &["Distribution", "ToolsTree", "ToolsTreeDistribution"])
        .scope(Scope::Universal)
        .tools()
        .metavar("BOOL")
        .help("Allow downloading distribution GPG keys from the network (dnf/pacman/zypper/apk only)."),
    Setting::new("Repositories", Section::Distribution, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "repositories")
        .matcher(Matcher::ListContains { profile: false })
        .scope(Scope::Universal)
        .tools()
        .nullable()
        .metavar("REPOS")
        .help("Enable extra repositories/components (Debian components, EPEL, Arch testing, …)."),
    Setting::new("Format", Section::Output, Parser::Enum("OutputFormat", OutputFormat::VALUES), "format")
        .matcher(Matcher::Enum("OutputFormat", OutputFormat::VALUES))
        .default_json("\"disk\"")
        .short('t')
        .specifier('t')
        .choices(&["confext", "cpio", "directory", "disk", "esp", "none", "portable", "sysext", "tar", "uki", "oci", "addon", ""])
        .help("Kind of artifact to produce."),
    Setting::new("ManifestFormat", Section::Output, Parser::List(ListOpts { split: Split::Default, item: Item::Enum("ManifestFormat", ManifestFormat::VALUES), sort_packages: false, reset: true, globs: false }), "manifest-format")
        .nullable()
        .metavar("FORMAT")
        .help("Also write <Output>.manifest (json) and/or <Output>.changelog."),
    Setting::new("Output", Section::Output, Parser::Filename("Output= or --output= requires a filename with no path components. Use OutputDirectory= or --output-directory= to configure the output directory."), "output")
        .factory(Factory::Output, &["ImageId", "ImageVersion"])
        .short('o')
        .specifier('o')
        .tools()
        .metavar("NAME")
        .help("Base name of the artifacts."),
    Setting::new("OutputExtension", Section::Output, Parser::Filename("OutputExtension= or --output-extension= requires a valid extension with no path components."), "output-extension")
        .factory(Factory::OutputExtension, &["Format"])
        .metavar("EXTENSION")
        .help("Extension appended to Output (before compression suffix)."),
    Setting::new("OutputSize", Section::Output, Parser::Bytes, "output-size")
        .nullable()
        .metavar("SIZE")
        .help("Grow (never shrink) the final disk image to this size (disk only)."),
    Setting::new("CompressOutput", Section::Output, Parser::Compression, "compress-output")
        .factory(Factory::CompressOutput, &["Distribution", "Release", "Format"])
        .metavar("ALG")
        .help("Compression of the output (outer for tar/cpio/disk/sysext/confext/portable; inner initrd for uki/esp/addon; layer for oci). Only gz/xz/zstd actually implemented."),
    Setting::new("CompressLevel", Section::Output, Parser::CompressLevel, "compress-level")
        .default_json("3")
        .scope(Scope::Inherit)
        .metavar("LEVEL")
        .help("Compression level passed to the compressor."),
    Setting::new("OutputDirectory", Section::Output, Parser::Path(PathOpts::new().optional()), "output-directory")
        .scope(Scope::Universal)
        .short('O')
        .compat_longs(&["output-dir"])
        .paths(&["output"])
        .specifier('O')
        .tools()
        .nullable()
        .metavar("DIR")
        .help("Where artifacts are placed."),
    Setting::new("OutputMode", Section::Output, Parser::Mode, "output-mode")
        .scope(Scope::Universal)
        .nullable()
        .metavar("MODE")
        .help("chmod applied to regular output files."),
    Setting::new("ImageVersion", Section::Output, Parser::Str, "image-version")
        .matcher(Matcher::Version)
        .scope(Scope::Inherit)
        .paths(&["version"])
        .read_text()
        .specifier('v')
        .nullable()
        .help("Version; appended to default Output, exported as $IMAGE_VERSION, written to os-release IMAGE_VERSION."),
    Setting::new("ImageId", Section::Output, Parser::Str, "image-id")
        .matcher(Matcher::Glob)
        .scope(Scope::Inherit)
        .specifier('i')
        .nullable()
        .help("Image identifier; default Output, $IMAGE_ID, os-release IMAGE_ID, OCI ref.name."),
    Setting::new("OciLabels", Section::Output, Parser::Dict(DictItem::KeyValue), "oci-labels")
        .nullable()
        .metavar("KEY=VALUE")
        .help("Labels in the OCI image config."),
    Setting::new("OciAnnotations", Section::Output, Parser::Dict(DictItem::KeyValue), "oci-annotations")
        .nullable()
        .metavar("KEY=VALUE")
        .help("Annotations on the OCI manifest (override mkosi's own)."),
    Setting::new("SplitArtifacts", Section::Output, Parser::SplitArtifacts, "split-artifacts")
        .default_json("[\"uki\", \"kernel\", \"initrd\"]")
        .nullable()
        .help("Extra files extracted next to the main output."),
    Setting::new("RepartDirectories", Section::Output, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: false }), "repart-directory")
        .compat_longs(&["repart-dir"])
        .paths(&["repart"])
        .nullable()
        .metavar("PATH")
        .help("systemd-repart definition directories for disk output; if any given, built-in defaults are not used."),
    Setting::new("SectorSize", Section::Output, Parser::SectorSize, "sector-size")
        .scope(Scope::Inherit)
        .nullable()
        .help("Sector size for repart."),
    Setting::new("Overlay", Section::Output, Parser::Bool, "overlay")
        .metavar("BOOL")
        .help("With BaseTrees=, only the delta on top of the base trees ends up in the output (sysext use case)."),
    Setting::new("Seed", Section::Output, Parser::Uuid, "seed")
        .factory(Factory::Seed, &[])
        .paths(&["seed"])
        .read_text()
        .metavar("UUID")
        .help("Seed for repart's deterministic UUIDs/labels."),
    Setting::new("ElTorito", Section::Output, Parser::Feature, "el-torito")
        .metavar("FEATURE")
        .help("Add an El Torito catalog to boot the ESP from optical media (repart ≥ 261)."),
    Setting::new("ElToritoSystem", Section::Output, Parser::Str, "el-torito-system")
        .nullable()
        .metavar("STRING")
        .help("ISO9660 system identifier."),
    Setting::new("ElToritoVolume", Section::Output, Parser::Str, "el-torito-volume")
        .nullable()
        .metavar("STRING")
        .help("ISO9660 volume identifier."),
    Setting::new("ElToritoPublisher", Section::Output, Parser::Str, "el-torito-publisher")
        .nullable()
        .metavar("STRING")
        .help("ISO9660 publisher identifier."),
    Setting::new("CleanScripts", Section::Output, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "clean-script")
        .paths(&["clean"])
        .recursive_paths(&["clean.d/*"])
        .nullable()
        .metavar("PATH")
        .help("Run after outputs are removed (clean verb / rebuild). Runs without tools tree."),
    Setting::new("Packages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: true, reset: true, globs: false }), "package")
        .short('p')
        .tools()
        .nullable()
        .metavar("PACKAGE")
        .help("Packages to install into the image."),
    Setting::new("BuildPackages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: true, reset: true, globs: false }), "build-package")
        .nullable()
        .metavar("PACKAGE")
        .help("Packages installed only into the build overlay (visible to prepare-build and build scripts)."),
    Setting::new("VolatilePackages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: true, reset: true, globs: false }), "volatile-package")
        .nullable()
        .metavar("PACKAGE")
        .help("Packages installed after build scripts, never cached (e.g. ones produced into $PACKAGEDIR)."),
    Setting::new("PackageDirectories", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: false }), "package-directory")
        .scope(Scope::Universal)
        .paths(&["packages"])
        .tools()
        .nullable()
        .metavar("PATH")
        .help("Directories of local packages turned into a local repo (changes invalidate the cache)."),
    Setting::new("VolatilePackageDirectories", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: false }), "volatile-package-directory")
        .scope(Scope::Universal)
        .nullable()
        .metavar("PATH")
        .help("Like PackageDirectories but not part of the cache key."),
    Setting::new("WithRecommends", Section::Content, Parser::Bool, "with-recommends")
        .metavar("BOOL")
        .help("Install weak dependencies (apt/dnf/zypper)."),
    Setting::new("WithDocs", Section::Content, Parser::Bool, "with-docs")
        .default_json("true")
        .metavar("BOOL")
        .help("Install documentation; exported as $WITH_DOCS."),
    Setting::new("BaseTrees", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new().optional()), sort_packages: false, reset: true, globs: false }), "base-tree")
        .nullable()
        .metavar("PATH")
        .help("Start from these trees instead of bootstrapping; only Packages= installed on top."),
    Setting::new("SkeletonTrees", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: true, absolute: true, directory: false }, sort_packages: false, reset: true, globs: false }), "skeleton-tree")
        .paths(&["skeleton", "skeleton.tar"])
        .nullable()
        .metavar("PATH")
        .help("Copied into the root before packages are installed (cached)."),
    Setting::new("ExtraTrees", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: false, absolute: true, directory: false }, sort_packages: false, reset: true, globs: false }), "extra-tree")
        .paths(&["extra", "extra.tar"])
        .nullable()
        .metavar("PATH")
        .help("Copied into the root after packages/build output, before postinst."),
    Setting::new("RemovePackages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "remove-package")
        .nullable()
        .metavar("PACKAGE")
        .help("Packages purged near the end (after firstboot)."),
    Setting::new("RemoveFiles", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "remove-files")
        .nullable()
        .metavar("GLOB")
        .help("Files deleted after package metadata cleanup, before finalize scripts."),
    Setting::new("CleanPackageMetadata", Section::Content, Parser::Feature, "clean-package-metadata")
        .metavar("FEATURE")
        .help("Remove package manager DB and repo metadata from the image."),
    Setting::new("SourceDateEpoch", Section::Content, Parser::SourceDateEpoch, "source-date-epoch")
        .factory(Factory::SourceDateEpoch, &["Environment"])
        .scope(Scope::Multiversal)
        .nullable()
        .metavar("TIMESTAMP")
        .help("Clamp mtimes, pass to repart and scripts for reproducibility."),
    Setting::new("SyncScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "sync-script")
        .paths(&["sync"])
        .recursive_paths(&["sync.d/*"])
        .tools()
        .nullable()
        .metavar("PATH")
        .help("Run before building (network on, host env, no image)."),
    Setting::new("PrepareScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "prepare-script")
        .compat(&["PrepareScript"])
        .paths(&["prepare", "prepare.chroot"])
        .recursive_paths(&["prepare.d/*"])
        .tools()
        .nullable()
        .metavar("PATH")
        .help("Run after package install with arg 'final', and again with 'build' in the build overlay; before caching."),
    Setting::new("BuildScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "build-script")
        .compat(&["BuildScript"])
        .paths(&["build", "build.chroot"])
        .recursive_paths(&["build.d/*"])
        .nullable()
        .metavar("PATH")
        .help("Build project sources into $DESTDIR inside a volatile overlay."),
    Setting::new("PostInstallationScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "postinst-script")
        .compat(&["PostInstallationScript"])
        .paths(&["postinst", "postinst.chroot"])
        .recursive_paths(&["postinst.d/*"])
        .nullable()
        .metavar("PATH")
        .help("Run after build output and extra trees are installed (arg 'final')."),
    Setting::new("FinalizeScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "finalize-script")
        .compat(&["FinalizeScript"])
        .paths(&["finalize", "finalize.chroot"])
        .recursive_paths(&["finalize.d/*"])
        .nullable()
        .metavar("PATH")
        .help("Last tree modification step before image generation."),
    Setting::new("PostOutputScripts", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: true }), "postoutput-script")
        .paths(&["postoutput"])
        .recursive_paths(&["postoutput.d/*"])
        .nullable()
        .metavar("PATH")
        .help("Run on the staged outputs ($OUTPUTDIR) before they are moved to OutputDirectory."),
    Setting::new("Bootable", Section::Content, Parser::Feature, "bootable")
        .matcher(Matcher::Feature)
        .metavar("FEATURE")
        .help("Make the image bootable (ESP, bootloader, UKIs, default initrd). auto = only if kernel+bootloader found."),
    Setting::new("Bootloader", Section::Content, Parser::Enum("Bootloader", Bootloader::VALUES), "bootloader")
        .default_json("\"systemd-boot\"")
        .choices(&["none", "uki", "systemd-boot", "grub", "uki-signed", "systemd-boot-signed", "grub-signed", ""])
        .help("UEFI boot loader to install."),
    Setting::new("BiosBootloader", Section::Content, Parser::Enum("BiosBootloader", BiosBootloader::VALUES), "bios-bootloader")
        .default_json("\"none\"")
        .choices(&["none", "grub", ""])
        .help("Also install grub for legacy BIOS (disk output)."),
    Setting::new("ShimBootloader", Section::Content, Parser::Enum("ShimBootloader", ShimBootloader::VALUES), "shim-bootloader")
        .default_json("\"none\"")
        .choices(&["none", "signed", "unsigned", ""])
        .help("Install shim+MokManager in front of the bootloader."),
    Setting::new("UnifiedKernelImages", Section::Content, Parser::EnumBool { name: "UnifiedKernelImage", values: UnifiedKernelImage::VALUES, yes: "signed", no: "none" }, "unified-kernel-images")
        .default_json("\"auto\"")
        .metavar("FEATURE")
        .help("Whether systemd-boot/grub boot UKIs (auto: if stub+ukify available) or Type #1 entries; 'signed' with signed bootloader uses prebuilt UKI."),
    Setting::new("UnifiedKernelImageFormat", Section::Content, Parser::Filename("UnifiedKernelImageFormat= or --unified-kernel-image-format= requires a filename with no path components."), "unified-kernel-image-format")
        .help("File name (without .efi) of installed UKIs."),
    Setting::new("UnifiedKernelImageProfiles", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::UkiProfile, sort_packages: false, reset: true, globs: false }), "uki-profile")
        .recursive_paths(&["uki-profiles/*.conf"])
        .nullable()
        .metavar("PATH")
        .help("Extra multi-profile UKI sections."),
    Setting::new("Initrds", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new().optional().constants(&["default"])), sort_packages: false, reset: true, globs: false }), "initrd")
        .factory(Factory::Initrds, &["Bootable", "Distribution", "Format", "Packages", "VolatilePackages", "Overlay"])
        .nullable()
        .metavar("PATH")
        .help("Initrds to use; 'default' = build the mkosi-initrd based default initrd as a dependency. Empty assignment disables."),
    Setting::new("MicrocodeHost", Section::Content, Parser::Bool, "microcode-host")
        .default_json("false")
        .metavar("BOOL")
        .help("Only include microcode for the build host CPU."),
    Setting::new("InitrdProfiles", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "initrd-profile")
        .default_json("[]")
        .scope(Scope::Initrd)
        .nullable()
        .metavar("PROFILE")
        .choices(&["lvm", "network", "nfs", "pkcs11", "plymouth", "raid"])
        .help("Profiles enabled in the default initrd."),
    Setting::new("InitrdPackages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "initrd-package")
        .scope(Scope::Initrd)
        .nullable()
        .metavar("PACKAGE")
        .help("Extra packages for the default initrd."),
    Setting::new("InitrdVolatilePackages", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "initrd-volatile-package")
        .scope(Scope::Initrd)
        .nullable()
        .metavar("PACKAGE")
        .help("Extra volatile packages for the default initrd."),
    Setting::new("Devicetrees", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "devicetrees")
        .compat(&["Devicetree"])
        .nullable()
        .help("Devicetree blobs to embed (.dtb / .dtbauto in UKI; exactly one for Type #1)."),
    Setting::new("Splash", Section::Content, Parser::Path(PathOpts::new().optional().absolute()), "splash")
        .nullable()
        .help("Boot splash for UKIs."),
    Setting::new("KernelCommandLine", Section::Content, Parser::List(ListOpts { split: Split::Space, item: Item::Str, sort_packages: false, reset: true, globs: false }), "kernel-command-line")
        .nullable()
        .metavar("OPTIONS")
        .help("Kernel cmdline for UKIs/entries; root=PARTUUID & mount.usr=PARTUUID get the real UUID filled in."),
    Setting::new("KernelModulesInclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "kernel-modules-include")
        .field("KernelModules")
        .nullable()
        .metavar("REGEX")
        .help("Legacy regex include of kernel modules (shares storage with KernelModules)."),
    Setting::new("KernelModulesExclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "kernel-modules-exclude")
        .nullable()
        .metavar("REGEX")
        .help("Legacy regex exclusion of kernel modules."),
    Setting::new("KernelModules", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "kernel-modules")
        .nullable()
        .metavar("GLOB")
        .help("Which modules stay in the image (plus deps and firmware)."),
    Setting::new("KernelModulesIncludeHost", Section::Content, Parser::Bool, "kernel-modules-include-host")
        .metavar("BOOL")
        .help("Keep modules currently loaded on the host."),
    Setting::new("KernelModulesInitrd", Section::Content, Parser::Bool, "kernel-modules-initrd")
        .default_json("true")
        .metavar("BOOL")
        .help("Append a per-kernel modules-only initrd to every UKI/entry."),
    Setting::new("KernelModulesInitrdInclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "kernel-modules-initrd-include")
        .field("KernelInitrdModules")
        .nullable()
        .metavar("REGEX")
        .help("Legacy regex include for the modules initrd."),
    Setting::new("KernelModulesInitrdExclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "kernel-modules-initrd-exclude")
        .nullable()
        .metavar("REGEX")
        .help("Legacy regex exclusion for the modules initrd."),
    Setting::new("KernelInitrdModules", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "kernel-initrd-modules")
        .nullable()
        .metavar("GLOB")
        .help("Modules put into the modules initrd."),
    Setting::new("KernelModulesInitrdIncludeHost", Section::Content, Parser::Bool, "kernel-modules-initrd-include-host")
        .metavar("BOOL")
        .help("Put host-loaded modules into the modules initrd."),
    Setting::new("FirmwareInclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "firmware-include")
        .field("FirmwareFiles")
        .nullable()
        .metavar("REGEX")
        .help("Legacy firmware include."),
    Setting::new("FirmwareExclude", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::KmodRegex, sort_packages: false, reset: true, globs: false }), "firmware-exclude")
        .nullable()
        .metavar("REGEX")
        .help("Legacy firmware exclusion."),
    Setting::new("FirmwareFiles", Section::Content, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "firmware-files")
        .nullable()
        .metavar("GLOB")
        .help("Firmware files to keep in addition to module dependencies."),
    Setting::new("Locale", Section::Content, Parser::Str, "locale")
        .nullable()
        .help("systemd-firstboot --locale + firstboot.locale credential; also rpm %_install_langs."),
    Setting::new("LocaleMessages", Section::Content, Parser::Str, "locale-messages")
        .nullable()
        .metavar("LOCALE")
        .help("firstboot --locale-messages."),
    Setting::new("Keymap", Section::Content, Parser::Str, "keymap")
        .scope(Scope::InitrdInherit)
        .nullable()
        .metavar("KEYMAP")
        .help("firstboot --keymap."),
    Setting::new("Timezone", Section::Content, Parser::Str, "timezone")
        .scope(Scope::InitrdInherit)
        .nullable()
        .metavar("TIMEZONE")
        .help("firstboot --timezone."),
    Setting::new("Hostname", Section::Content, Parser::Str, "hostname")
        .scope(Scope::InitrdInherit)
        .nullable()
        .metavar("HOSTNAME")
        .help("firstboot --hostname and os-release DEFAULT_HOSTNAME."),
    Setting::new("RootPassword", Section::Content, Parser::RootPassword, "root-password")
        .scope(Scope::InitrdInherit)
        .paths(&["rootpw"])
        .read_text()
        .secret()
        .nullable()
        .metavar("PASSWORD")
        .help("Root password (hashed with openssl passwd -6) via firstboot + credstore."),
    Setting::new("RootShell", Section::Content, Parser::Str, "root-shell")
        .nullable()
        .metavar("SHELL")
        .help("firstboot --root-shell."),
    Setting::new("MachineId", Section::Content, Parser::Uuid, "machine-id")
        .paths(&["machine-id"])
        .read_text()
        .nullable()
        .metavar("MACHINE_ID")
        .help("/etc/machine-id content (32 hex chars)."),
    Setting::new("Autologin", Section::Content, Parser::Bool, "autologin")
        .short_const('a', "yes")
        .metavar("BOOL")
        .help("agetty autologin drop-ins for console-getty, getty@tty1, serial-getty@hvc0."),
    Setting::new("MakeInitrd", Section::Content, Parser::Bool, "make-initrd")
        .metavar("BOOL")
        .help("Add /etc/initrd-release so the image works as an initrd."),
    Setting::new("Ssh", Section::Content, Parser::EnumBool { name: "Ssh", values: Ssh::VALUES, yes: "always", no: "never" }, "ssh")
        .default_json("\"auto\"")
        .choices(&["always", "auto", "runtime", "never", ""])
        .help("Install vsock sshd socket units (auto: if sshd present and no systemd-ssh-generator); runtime/always require SSH cert for vm."),
    Setting::new("SELinuxRelabel", Section::Content, Parser::Feature, "selinux-relabel")
        .metavar("FEATURE")
        .help("Run setfiles over the image."),
    Setting::new("SecureBoot", Section::Validation, Parser::Bool, "secure-boot")
        .metavar("BOOL")
        .help("Sign bootloader, UKIs, kernels, shim/grub for Secure Boot."),
    Setting::new("SecureBootAutoEnroll", Section::Validation, Parser::Bool, "secure-boot-auto-enroll")
        .default_json("true")
        .metavar("BOOL")
        .help("Have systemd-boot auto-enroll the key (PK/KEK/db .auth files or bootctl --secure-boot-auto-enroll)."),
    Setting::new("SecureBootKey", Section::Validation, Parser::Key, "secure-boot-key")
        .scope(Scope::Universal)
        .paths(&["key"])
        .nullable()
        .metavar("KEY")
        .help("Private key for SB signing (PCR signing uses SignExpectedPcrKey, which independently defaults to mkosi.key)."),
    Setting::new("SecureBootKeySource", Section::Validation, Parser::KeySource, "secure-boot-key-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Universal)
        .metavar("SOURCE[:ENGINE]")
        .help("Where the SB key comes from."),
    Setting::new("SecureBootCertificate", Section::Validation, Parser::Certificate, "secure-boot-certificate")
        .scope(Scope::Universal)
        .paths(&["crt"])
        .nullable()
        .metavar("PATH")
        .help("X.509 cert for SB signing."),
    Setting::new("SecureBootCertificateSource", Section::Validation, Parser::CertificateSource, "secure-boot-certificate-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Universal)
        .metavar("SOURCE[:PROVIDER]")
        .help("Where the SB cert comes from."),
    Setting::new("SecureBootSignTool", Section::Validation, Parser::Enum("SecureBootSignTool", SecureBootSignTool::VALUES), "secure-boot-sign-tool")
        .default_json("\"auto\"")
        .choices(&["auto", "sbsign", "systemd-sbsign", ""])
        .help("Signing tool."),
    Setting::new("Verity", Section::Validation, Parser::EnumBool { name: "Verity", values: Verity::VALUES, yes: "signed", no: "disabled" }, "verity")
        .default_json("\"auto\"")
        .metavar("FEATURE")
        .choices(&["disabled", "hash", "signed", "defer", "auto"])
        .help("Verity policy for disk/extension images."),
    Setting::new("VerityKey", Section::Validation, Parser::Key, "verity-key")
        .scope(Scope::Universal)
        .paths(&["key"])
        .nullable()
        .metavar("KEY")
        .help("Key for verity root hash signatures."),
    Setting::new("VerityKeySource", Section::Validation, Parser::KeySource, "verity-key-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Universal)
        .metavar("SOURCE[:ENGINE]")
        .help("Source of VerityKey."),
    Setting::new("VerityCertificate", Section::Validation, Parser::Certificate, "verity-certificate")
        .scope(Scope::Universal)
        .paths(&["crt"])
        .nullable()
        .metavar("PATH")
        .help("Cert for verity signatures; also copied to /usr/lib/verity.d/*.crt."),
    Setting::new("VerityCertificateSource", Section::Validation, Parser::CertificateSource, "verity-certificate-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Universal)
        .metavar("SOURCE[:PROVIDER]")
        .help("Source of VerityCertificate."),
    Setting::new("SignExpectedPcr", Section::Validation, Parser::Feature, "sign-expected-pcr")
        .metavar("FEATURE")
        .help("Whether this profile's PCR measurements are signed (if any profile says no → ukify --sign-profile=main + --sign-profile=<ID> for the others; needs ukify ≥258)."),
    Setting::new("SignExpectedPcrKey", Section::Validation, Parser::Key, "sign-expected-pcr-key")
        .scope(Scope::Inherit)
        .paths(&["key"])
        .nullable()
        .metavar("KEY")
        .help("Key for PCR signatures."),
    Setting::new("SignExpectedPcrKeySource", Section::Validation, Parser::KeySource, "sign-expected-pcr-key-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Inherit)
        .metavar("SOURCE[:ENGINE]")
        .help("Must equal SecureBootKeySource."),
    Setting::new("SignExpectedPcrCertificate", Section::Validation, Parser::Certificate, "sign-expected-pcr-certificate")
        .scope(Scope::Inherit)
        .paths(&["crt"])
        .nullable()
        .metavar("PATH")
        .help("Cert for PCR signatures."),
    Setting::new("SignExpectedPcrCertificateSource", Section::Validation, Parser::CertificateSource, "sign-expected-pcr-certificate-source")
        .default_json("{\"Source\": \"\", \"Type\": \"file\"}")
        .scope(Scope::Inherit)
        .metavar("SOURCE[:PROVIDER]")
        .help("Must equal SecureBootCertificateSource."),
    Setting::new("Passphrase", Section::Validation, Parser::Path(PathOpts::new().optional().secret()), "passphrase")
        .paths(&["passphrase"])
        .nullable()
        .metavar("PATH")
        .help("LUKS key file handed to repart (--key-file)."),
    Setting::new("Checksum", Section::Validation, Parser::Bool, "checksum")
        .factory(Factory::Checksum, &["Sign"])
        .metavar("BOOL")
        .help("Write <Output>.SHA256SUMS."),
    Setting::new("Sign", Section::Validation, Parser::Bool, "sign")
        .metavar("BOOL")
        .help("Detached-sign the SHA256SUMS."),
    Setting::new("Key", Section::Validation, Parser::Str, "key")
        .nullable()
        .help("Signing key."),
    Setting::new("OpenPGPTool", Section::Validation, Parser::Str, "openpgp-tool")
        .default_json("\"gpg\"")
        .help("gpg or a SOP implementation (sqop, rsop, …)."),
    Setting::new("ToolsTree", Section::Build, Parser::Path(PathOpts::new().constants(&["default", "yes", "no"])), "tools-tree")
        .scope(Scope::Universal)
        .paths(&["tools"])
        .nullable()
        .metavar("PATH")
        .help("Run all tools from this tree; yes/default = build mkosi's default tools tree first."),
    Setting::new("ToolsTreeDistribution", Section::Build, Parser::Enum("Distribution", Distribution::VALUES), "tools-tree-distribution")
        .matcher(Matcher::Enum("Distribution", Distribution::VALUES))
        .factory(Factory::ToolsTreeDistribution, &[])
        .scope(Scope::Tools)
        .choices(&["fedora", "debian", "kali", "ubuntu", "postmarketos", "arch", "opensuse", "mageia", "centos", "rhel", "rhel-ubi", "openmandriva", "rocky", "alma", "azure", "custom", ""])
        .help("Distribution of the default tools tree."),
    Setting::new("ToolsTreeRelease", Section::Build, Parser::Str, "tools-tree-release")
        .matcher(Matcher::Str)
        .factory(Factory::ToolsTreeRelease, &["ToolsTreeDistribution"])
        .scope(Scope::Tools)
        .metavar("RELEASE")
        .help("Release of the default tools tree."),
    Setting::new("ToolsTreeProfiles", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "tools-tree-profile")
        .default_json("[\"misc\", \"package-manager\", \"runtime\"]")
        .scope(Scope::Tools)
        .nullable()
        .metavar("PROFILE")
        .choices(&["devel", "misc", "package-manager", "runtime"])
        .help("Profiles of the default tools tree."),
    Setting::new("ToolsTreeMirror", Section::Build, Parser::Str, "tools-tree-mirror")
        .factory(Factory::ToolsTreeMirror, &["Distribution", "Mirror", "ToolsTreeDistribution"])
        .scope(Scope::Tools)
        .nullable()
        .metavar("MIRROR")
        .help("Mirror for the default tools tree."),
    Setting::new("ToolsTreeRepositories", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "tools-tree-repository")
        .scope(Scope::Tools)
        .nullable()
        .metavar("REPOS")
        .help("Repositories for the default tools tree."),
    Setting::new("ToolsTreeSandboxTrees", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: true, absolute: true, directory: false }, sort_packages: false, reset: true, globs: false }), "tools-tree-sandbox-tree")
        .scope(Scope::Tools)
        .compat(&["ToolsTreePackageManagerTrees"])
        .compat_longs(&["tools-tree-package-manager-tree"])
        .nullable()
        .metavar("PATH")
        .help("Sandbox trees for the default tools tree."),
    Setting::new("ToolsTreePackages", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "tools-tree-package")
        .scope(Scope::Tools)
        .nullable()
        .metavar("PACKAGE")
        .help("Extra packages for the default tools tree."),
    Setting::new("ToolsTreePackageDirectories", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: false }), "tools-tree-package-directory")
        .scope(Scope::Tools)
        .nullable()
        .metavar("PATH")
        .help("Local packages for the default tools tree."),
    Setting::new("ToolsTreeCertificates", Section::Build, Parser::Bool, "tools-tree-certificates")
        .default_json("true")
        .scope(Scope::Universal)
        .metavar("BOOL")
        .help("Use CA certs (/etc/pki/ca-trust, /etc/pki/tls, /etc/ssl, /etc/ca-certificates, /var/lib/ca-certificates) from tools tree instead of host."),
    Setting::new("ExtraSearchPaths", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new().exclude_usr()), sort_packages: false, reset: true, globs: false }), "extra-search-path")
        .scope(Scope::Universal)
        .nullable()
        .metavar("PATH")
        .help("Prepended to $PATH for tool lookup (binaries run with tools-tree /usr)."),
    Setting::new("Incremental", Section::Build, Parser::EnumBool { name: "Incremental", values: Incremental::VALUES, yes: "yes", no: "no" }, "incremental")
        .default_json("\"no\"")
        .scope(Scope::Universal)
        .short_const('i', "yes")
        .choices(&["yes", "no", "strict"])
        .help("Cache the tree after package install + prepare scripts; strict = fail if cache missing/stale."),
    Setting::new("CacheOnly", Section::Build, Parser::EnumBool { name: "Cacheonly", values: CACHE_ONLY_VALUES, yes: "always", no: "auto" }, "cache-only")
        .default_json("\"auto\"")
        .scope(Scope::Inherit)
        .choices(&["always", "auto", "auto", "metadata", "never", ""])
        .help("Controls repo metadata refresh / network use of package managers."),
    Setting::new("SandboxTrees", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: true, absolute: true, directory: false }, sort_packages: false, reset: true, globs: false }), "sandbox-tree")
        .scope(Scope::Universal)
        .compat(&["PackageManagerTrees"])
        .compat_longs(&["package-manager-tree"])
        .paths(&["sandbox", "sandbox.tar", "pkgmngr", "pkgmngr.tar"])
        .tools()
        .nullable()
        .metavar("PATH")
        .help("Files overlaid onto the tool sandbox's /etc,/usr,… (package manager config, keys, certs)."),
    Setting::new("WorkspaceDirectory", Section::Build, Parser::Path(PathOpts::new().optional()), "workspace-directory")
        .scope(Scope::Multiversal)
        .compat_longs(&["workspace-dir"])
        .nullable()
        .metavar("DIR")
        .help("Where the temporary build workspace lives."),
    Setting::new("CacheDirectory", Section::Build, Parser::Path(PathOpts::new().optional()), "cache-directory")
        .scope(Scope::Universal)
        .compat_longs(&["cache-dir"])
        .paths(&["cache"])
        .nullable()
        .metavar("PATH")
        .help("Incremental image caches + repo metadata/keyring snapshots."),
    Setting::new("CacheKey", Section::Build, Parser::Str, "cache-key")
        .default_json("\"&d~&r~&a~&I\"")
        .scope(Scope::Inherit)
        .metavar("KEY")
        .help("Name prefix of the cache entries within CacheDirectory."),
    Setting::new("PackageCacheDirectory", Section::Build, Parser::Path(PathOpts::new().optional()), "package-cache-directory")
        .scope(Scope::Multiversal)
        .compat_longs(&["package-cache-dir"])
        .paths(&["pkgcache"])
        .nullable()
        .metavar("PATH")
        .help("Downloaded package cache (shared, flock'ed)."),
    Setting::new("BuildDirectory", Section::Build, Parser::Path(PathOpts::new().optional()), "build-directory")
        .scope(Scope::Universal)
        .compat_longs(&["build-dir"])
        .paths(&["builddir"])
        .nullable()
        .metavar("PATH")
        .help("Persistent out-of-tree build dir ($BUILDDIR=/work/build)."),
    Setting::new("BuildKey", Section::Build, Parser::Str, "build-key")
        .default_json("\"&d~&r~&a\"")
        .scope(Scope::Inherit)
        .metavar("KEY")
        .help("Subdirectory of BuildDirectory used for this image."),
    Setting::new("UseSubvolumes", Section::Build, Parser::Feature, "use-subvolumes")
        .scope(Scope::Universal)
        .metavar("FEATURE")
        .help("Use btrfs subvolumes/snapshots for trees."),
    Setting::new("RepartOffline", Section::Build, Parser::Bool, "repart-offline")
        .default_json("true")
        .scope(Scope::Universal)
        .help("Build disk images without loop devices (no → needs real root)."),
    Setting::new("History", Section::Build, Parser::Bool, "history")
        .scope(Scope::Main)
        .metavar("BOOL")
        .help("Save CLI config to .mkosi-private/history/latest.json and reuse it for later non-build verbs."),
    Setting::new("BuildSources", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: true, absolute: false, directory: true }, sort_packages: false, reset: true, globs: false }), "build-sources")
        .matcher(Matcher::BuildSources)
        .factory(Factory::BuildSources, &[])
        .scope(Scope::Multiversal)
        .nullable()
        .metavar("PATH")
        .help("Source trees mounted into scripts."),
    Setting::new("BuildSourcesEphemeral", Section::Build, Parser::EnumBool { name: "BuildSourcesEphemeral", values: BuildSourcesEphemeral::VALUES, yes: "yes", no: "no" }, "build-sources-ephemeral")
        .default_json("\"no\"")
        .scope(Scope::Multiversal)
        .choices(&["yes", "no", "buildcache"])
        .help("Overlay sources so script changes are discarded (buildcache keeps upper dir in BuildDirectory for build scripts)."),
    Setting::new("Environment", Section::Build, Parser::Dict(DictItem::Environment), "environment")
        .matcher(Matcher::KeyValue)
        .short('E')
        .tools()
        .nullable()
        .metavar("NAME[=VALUE]")
        .help("Extra env for scripts and package managers; later keys override."),
    Setting::new("EnvironmentFiles", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Path(PathOpts::new()), sort_packages: false, reset: true, globs: false }), "env-file")
        .paths(&["env"])
        .tools()
        .nullable()
        .metavar("PATH")
        .help("KEY=VALUE files loaded before Environment=."),
    Setting::new("WithTests", Section::Build, Parser::Bool, "with-tests")
        .default_json("true")
        .scope(Scope::Universal)
        .short_const('T', "no")
        .help("$WITH_TESTS for build scripts."),
    Setting::new("WithNetwork", Section::Build, Parser::Bool, "with-network")
        .scope(Scope::Universal)
        .metavar("BOOL")
        .help("Network in build/postinst/finalize scripts ($WITH_NETWORK)."),
    Setting::new("ProxyUrl", Section::Build, Parser::Str, "proxy-url")
        .factory(Factory::ProxyUrl, &["Environment"])
        .scope(Scope::Multiversal)
        .nullable()
        .metavar("URL")
        .help("Proxy for everything mkosi runs."),
    Setting::new("ProxyExclude", Section::Build, Parser::List(ListOpts { split: Split::Default, item: Item::Str, sort_packages: false, reset: true, globs: false }), "proxy-exclude")
        .factory(Factory::ProxyExclude, &["Environment"])
        .scope(Scope::Multiversal)
        .nullable()
        .metavar("HOST")
        .help("Hosts bypassing the proxy."),
    Setting::new("ProxyPeerCertificate", Section::Build, Parser::Path(PathOpts::new()), "proxy-peer-certificate")
        .factory(Factory::ProxyPeerCertificate, &[])
        .scope(Scope::Multiversal)
        .nullable()
        .help("CA bundle for the proxy (dnf only)."),
    Setting::new("ProxyClientCertificate", Section::Build, Parser::Path(PathOpts::new().secret()), "proxy-client-certificate")
        .scope(Scope::Multiversal)
        .nullable()
        .help("Client cert for the proxy (dnf only)."),
    Setting::new("ProxyClientKey", Section::Build, Parser::Path(PathOpts::new().secret()), "proxy-client-key")
        .factory(Factory::ProxyClientKey, &["ProxyClientCertificate"])
        .scope(Scope::Multiversal)
        .nullable()
        .help("Client key for the proxy (dnf only)."),
    Setting::new("MakeScriptsExecutable", Section::Build, Parser::Bool, "make-scripts-executable")
        .default_json("false")
        .scope(Scope::Multiversal)
        .metavar("BOOL")
        .help("chmod u+x non-executable scripts instead of failing."),
    Setting::new("ForeignUIDRange", Section::Build, Parser::Bool, "foreign-uid-range")
        .scope(Scope::Main)
        .help("Shift directory outputs to the foreign UID range (needed for shell/boot/vm on directories)."),
    Setting::new("NSpawnSettings", Section::Runtime, Parser::Path(PathOpts::new()), "settings")
        .scope(Scope::Main)
        .paths(&["nspawn"])
        .nullable()
        .metavar("PATH")
        .help(".nspawn file copied next to the output and used by boot/shell."),
    Setting::new("Ephemeral", Section::Runtime, Parser::Bool, "ephemeral")
        .scope(Scope::Main)
        .metavar("BOOL")
        .help("Boot a throwaway reflink copy of the image."),
    Setting::new("Credentials", Section::Runtime, Parser::Credentials, "credential")
        .scope(Scope::Main)
        .paths(&["credentials"])
        .nullable()
        .metavar("NAME=VALUE")
        .help("systemd credentials for container/VM."),
    Setting::new("KernelCommandLineExtra", Section::Runtime, Parser::List(ListOpts { split: Split::Space, item: Item::Str, sort_packages: false, reset: true, globs: false }), "kernel-command-line-extra")
        .scope(Scope::Main)
        .nullable()
        .metavar("OPTIONS")
        .help("Extra cmdline at runtime (SMBIOS/-append for VMs, init args/env for nspawn)."),
    Setting::new("RuntimeTrees", Section::Runtime, Parser::List(ListOpts { split: Split::Default, item: Item::Tree { required: false, absolute: false, directory: false }, sort_packages: false, reset: true, globs: false }), "runtime-tree")
        .scope(Scope::Main)
        .nullable()
        .metavar("SOURCE:[TARGET]")
        .help("Host dirs shared into the machine (virtiofs / nspawn bind, uid-mapped)."),
    Setting::new("RuntimeSize", Section::Runtime, Parser::Bytes, "runtime-size")
        .scope(Scope::Main)
        .nullable()
        .metavar("SIZE")
        .help("Grow disk image before booting (in place)."),
    Setting::new("RuntimeNetwork", Section::Runtime, Parser::Enum("Network", Network::VALUES), "runtime-network")
        .default_json("\"user\"")
        .scope(Scope::Main)
        .choices(&["interface", "user", "none", ""])
        .help("Network setup for boot/vm."),
    Setting::new("RuntimeBuildSources", Section::Runtime, Parser::Bool, "runtime-build-sources")
        .scope(Scope::Main)
        .metavar("BOOL")
        .help("Mount BuildSources and build dir at /work/src, /work/build in the machine."),
    Setting::new("BindUser", Section::Runtime, Parser::Bool, "bind-user")
        .scope(Scope::Main)
        .metavar("BOOL")
        .help("Bind current user into container / vmspawn (qemu: unsupported)."),
    Setting::new("SshKey", Section::Runtime, Parser::Path(PathOpts::new().secret()), "ssh-key")
        .scope(Scope::Main)
        .paths(&["key"])
        .nullable()
        .metavar("PATH")
        .help("Private key used by mkosi ssh."),
    Setting::new("SshCertificate", Section::Runtime, Parser::Path(PathOpts::new()), "ssh-certificate")
        .scope(Scope::Main)
        .paths(&["crt"])
        .nullable()
        .metavar("PATH")
        .help("Cert whose pubkey becomes ssh.authorized_keys.root credential."),
    Setting::new("VirtualMachineMonitor", Section::Runtime, Parser::Enum("Vmm", Vmm::VALUES), "vmm")
        .default_json("\"qemu\"")
        .scope(Scope::Main)
        .choices(&["qemu", "vmspawn", ""])
        .help("VMM used by the vm verb."),
    Setting::new("Machine", Section::Runtime, Parser::Str, "machine")
        .factory(Factory::Machine, &[])
        .scope(Scope::Main)
        .nullable()
        .metavar("NAME")
        .help("Machine name (nspawn/machined/ssh state file)."),
    Setting::new("ForwardJournal", Section::Runtime, Parser::Path(PathOpts::new().optional()), "forward-journal")
        .scope(Scope::Main)
        .nullable()
        .metavar("PATH")
        .help("Forward guest journal to the host via systemd-journal-remote."),
    Setting::new("SysupdateDirectory", Section::Runtime, Parser::Path(PathOpts::new()), "sysupdate-directory")
        .scope(Scope::Main)
        .compat_longs(&["sysupdate-dir"])
        .paths(&["sysupdate"])
        .nullable()
        .metavar("PATH")
        .help("sysupdate.d definitions for the sysupdate verb."),
    Setting::new("Console", Section::Runtime, Parser::Enum("ConsoleMode", ConsoleMode::VALUES), "console")
        .default_json("\"native\"")
        .scope(Scope::Main)
        .metavar("MODE")
        .help("VM console mode."),
    Setting::new("CPUs", Section::Runtime, Parser::Number, "cpus")
        .default_json("1")
        .scope(Scope::Main)
        .compat(&["QemuSmp"])
        .compat_longs(&["qemu-smp"])
        .metavar("CPUS")
        .help("vCPUs."),
    Setting::new("RAM", Section::Runtime, Parser::Bytes, "ram")
        .default_json("2147483648")
        .scope(Scope::Main)
        .compat(&["QemuMem"])
        .compat_longs(&["qemu-mem"])
        .metavar("BYTES")
        .help("Guest RAM."),
    Setting::new("MaxMem", Section::Runtime, Parser::Bytes, "maxmem")
        .scope(Scope::Main)
        .metavar("BYTES")
        .help("Max memory incl. hotplug (qemu maxmem=)."),
    Setting::new("KVM", Section::Runtime, Parser::Feature, "kvm")
        .scope(Scope::Main)
        .compat(&["QemuKvm"])
        .compat_longs(&["qemu-kvm"])
        .metavar("FEATURE")
        .help("Use KVM acceleration."),
    Setting::new("CXL", Section::Runtime, Parser::Bool, "cxl")
        .scope(Scope::Main)
        .metavar("BOOLEAN")
        .help("Enable CXL in qemu machine (x86/arm)."),
    Setting::new("VSock", Section::Runtime, Parser::Feature, "vsock")
        .scope(Scope::Main)
        .compat(&["QemuVsock"])
        .compat_longs(&["qemu-vsock"])
        .metavar("FEATURE")
        .help("Attach vhost-vsock."),
    Setting::new("VSockCID", Section::Runtime, Parser::VsockCid, "vsock-cid")
        .default_json("-1")
        .scope(Scope::Main)
        .compat(&["QemuVsockConnectionId"])
        .compat_longs(&["qemu-vsock-cid"])
        .metavar("NUMBER|auto|hash")
        .help("vsock CID."),
    Setting::new("TPM", Section::Runtime, Parser::Feature, "tpm")
        .scope(Scope::Main)
        .compat(&["QemuSwtpm"])
        .compat_longs(&["qemu-swtpm"])
        .metavar("FEATURE")
        .help("swtpm-backed virtual TPM."),
    Setting::new("Removable", Section::Runtime, Parser::Bool, "removable")
        .scope(Scope::Main)
        .compat(&["QemuRemovable"])
        .compat_longs(&["qemu-removable"])
        .metavar("BOOLEAN")
        .help("Attach root disk as removable SCSI."),
    Setting::new("DiskType", Section::Runtime, Parser::Enum("QemuDiskType", QemuDiskType::VALUES), "disk-type")
        .default_json("\"virtio-blk\"")
        .scope(Scope::Main)
        .choices(&["virtio-blk", "virtio-scsi", "nvme", "scsi-cd", ""])
        .help("Root disk device model."),
    Setting::new("Firmware", Section::Runtime, Parser::Enum("Firmware", Firmware::VALUES), "firmware")
        .default_json("\"auto\"")
        .scope(Scope::Main)
        .compat(&["QemuFirmware"])
        .compat_longs(&["qemu-firmware"])
        .choices(&["auto", "linux", "linux-noinitrd", "uefi", "uefi-secure-boot", ""])
        .help("VM firmware selection."),
    Setting::new("FirmwareVariables", Section::Runtime, Parser::Path(PathOpts::new().optional().constants(&["custom", "microsoft", "microsoft-mok"])), "firmware-variables")
        .scope(Scope::Main)
        .compat(&["QemuFirmwareVariables"])
        .compat_longs(&["qemu-firmware-variables"])
        .nullable()
        .metavar("PATH")
        .help("OVMF vars template."),
    Setting::new("Linux", Section::Runtime, Parser::Str, "linux")
        .scope(Scope::Main)
        .compat(&["QemuKernel"])
        .compat_longs(&["qemu-kernel"])
        .nullable()
        .metavar("PATH")
        .help("Kernel for direct kernel boot."),
    Setting::new("Drives", Section::Runtime, Parser::List(ListOpts { split: Split::Space, item: Item::Drive, sort_packages: false, reset: true, globs: false }), "drive")
        .scope(Scope::Main)
        .compat(&["QemuDrives"])
        .compat_longs(&["qemu-drive"])
        .nullable()
        .metavar("DRIVE")
        .help("Extra qemu blockdevs (use QemuArgs to attach devices)."),
    Setting::new("QemuArgs", Section::Runtime, Parser::List(ListOpts { split: Split::ShellSpace, item: Item::Str, sort_packages: false, reset: true, globs: false }), "qemu-args")
        .scope(Scope::Main)
        .nullable()
        .metavar("ARGS")
        .help("Extra qemu arguments."),
    Setting::new("Register", Section::Runtime, Parser::Feature, "register")
        .default_json("\"auto\"")
        .scope(Scope::Main)
        .metavar("BOOL")
        .help("Register with (user) systemd-machined."),
    Setting::new("StorageTargetMode", Section::Runtime, Parser::Feature, "storage-target-mode")
        .default_json("\"auto\"")
        .scope(Scope::Main)
        .metavar("FEATURE")
        .help("serve verb also exports the disk via NVMe-TCP."),
];
