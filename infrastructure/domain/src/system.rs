//! System architectures: a CPU architecture and an operating system, written `{arch}-{os}`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CpuArch {
    /// 64-bit x86 (`x86_64`).
    X86_64,
    /// 64-bit ARM (`aarch64`).
    Aarch64,
    /// 32-bit x86 (`i686`).
    I686,
    /// 32-bit ARMv7 (`armv7l`).
    Armv7l,
    /// 64-bit RISC-V (`riscv64`).
    Riscv64,
}

impl CpuArch {
    /// Every known architecture.
    pub const ALL: [CpuArch; 5] = [
        CpuArch::X86_64,
        CpuArch::Aarch64,
        CpuArch::I686,
        CpuArch::Armv7l,
        CpuArch::Riscv64,
    ];

    /// The architecture's name as written in a system string, e.g. `"x86_64"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CpuArch::X86_64 => "x86_64",
            CpuArch::Aarch64 => "aarch64",
            CpuArch::I686 => "i686",
            CpuArch::Armv7l => "armv7l",
            CpuArch::Riscv64 => "riscv64",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for CpuArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OperatingSystem {
    /// Linux (`linux`).
    Linux,
    /// macOS and other Darwin systems (`darwin`).
    Darwin,
    /// Windows (`windows`).
    Windows,
    /// FreeBSD (`freebsd`).
    FreeBsd,
}

impl OperatingSystem {
    /// Every known operating system.
    pub const ALL: [OperatingSystem; 4] = [
        OperatingSystem::Linux,
        OperatingSystem::Darwin,
        OperatingSystem::Windows,
        OperatingSystem::FreeBsd,
    ];

    /// The system's name as written in a system string, e.g. `"linux"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperatingSystem::Linux => "linux",
            OperatingSystem::Darwin => "darwin",
            OperatingSystem::Windows => "windows",
            OperatingSystem::FreeBsd => "freebsd",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl fmt::Display for OperatingSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A supported pair of CPU architecture and operating system, written `{arch}-{os}` as in
/// `x86_64-linux` or `aarch64-darwin`.
///
/// Every combination of [`CpuArch`] and [`OperatingSystem`] is supported except those that do
/// not exist: `i686-darwin`, `armv7l-darwin`, `riscv64-darwin`, `armv7l-windows` and
/// `riscv64-windows`. [`SystemArchitecture::ALL`] lists them. Deserialisation validates too.
///
/// ```
/// use cim_domain_infrastructure::{CpuArch, OperatingSystem, SystemArchitecture};
///
/// let system = SystemArchitecture::new("aarch64-darwin")?;
/// assert_eq!(system.arch(), CpuArch::Aarch64);
/// assert_eq!(system.os(), OperatingSystem::Darwin);
/// assert_eq!(system, SystemArchitecture::AARCH64_DARWIN);
/// assert!(SystemArchitecture::new("riscv64-windows").is_err());
/// # Ok::<(), cim_domain_infrastructure::SystemArchitectureError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SystemArchitecture {
    arch: CpuArch,
    os: OperatingSystem,
}

/// Why a string is not a supported [`SystemArchitecture`].
///
/// Every message names the rejected value and lists the known systems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SystemArchitectureError {
    /// Not of the form `{arch}-{os}`.
    #[error("invalid system {value:?}: expected \"{{arch}}-{{os}}\", one of: {known}", known = KnownSystems)]
    Malformed {
        /// The rejected input.
        value: String,
    },
    /// The architecture part is not a known [`CpuArch`].
    #[error("invalid system {value:?}: unknown architecture {arch:?}; known systems: {known}", known = KnownSystems)]
    UnknownArch {
        /// The rejected input.
        value: String,
        /// The architecture part.
        arch: String,
    },
    /// The operating-system part is not a known [`OperatingSystem`].
    #[error("invalid system {value:?}: unknown operating system {os:?}; known systems: {known}", known = KnownSystems)]
    UnknownOs {
        /// The rejected input.
        value: String,
        /// The operating-system part.
        os: String,
    },
    /// Both parts are known but the pair does not exist, e.g. `riscv64-darwin`.
    #[error("unsupported system {value:?}: {arch} does not run {os}; known systems: {known}", known = KnownSystems)]
    UnsupportedPair {
        /// The rejected input.
        value: String,
        /// The architecture.
        arch: CpuArch,
        /// The operating system.
        os: OperatingSystem,
    },
}

/// Displays the list of known systems, comma separated.
struct KnownSystems;

impl fmt::Display for KnownSystems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, system) in SystemArchitecture::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            fmt::Display::fmt(system, f)?;
        }
        Ok(())
    }
}

const fn supported(arch: CpuArch, os: OperatingSystem) -> bool {
    !matches!(
        (arch, os),
        (
            CpuArch::I686 | CpuArch::Armv7l | CpuArch::Riscv64,
            OperatingSystem::Darwin
        ) | (CpuArch::Armv7l | CpuArch::Riscv64, OperatingSystem::Windows)
    )
}

impl SystemArchitecture {
    /// `x86_64-linux`.
    pub const X86_64_LINUX: Self = Self::known(CpuArch::X86_64, OperatingSystem::Linux);
    /// `aarch64-linux`.
    pub const AARCH64_LINUX: Self = Self::known(CpuArch::Aarch64, OperatingSystem::Linux);
    /// `x86_64-darwin`.
    pub const X86_64_DARWIN: Self = Self::known(CpuArch::X86_64, OperatingSystem::Darwin);
    /// `aarch64-darwin`.
    pub const AARCH64_DARWIN: Self = Self::known(CpuArch::Aarch64, OperatingSystem::Darwin);
    /// `x86_64-windows`.
    pub const X86_64_WINDOWS: Self = Self::known(CpuArch::X86_64, OperatingSystem::Windows);
    /// `aarch64-windows`.
    pub const AARCH64_WINDOWS: Self = Self::known(CpuArch::Aarch64, OperatingSystem::Windows);
    /// `x86_64-freebsd`.
    pub const X86_64_FREEBSD: Self = Self::known(CpuArch::X86_64, OperatingSystem::FreeBsd);
    /// `armv7l-linux`.
    pub const ARMV7L_LINUX: Self = Self::known(CpuArch::Armv7l, OperatingSystem::Linux);
    /// `riscv64-linux`.
    pub const RISCV64_LINUX: Self = Self::known(CpuArch::Riscv64, OperatingSystem::Linux);
    /// `i686-linux`.
    pub const I686_LINUX: Self = Self::known(CpuArch::I686, OperatingSystem::Linux);

    /// Every supported system, architecture by architecture.
    pub const ALL: [SystemArchitecture; 15] = [
        Self::known(CpuArch::X86_64, OperatingSystem::Linux),
        Self::known(CpuArch::X86_64, OperatingSystem::Darwin),
        Self::known(CpuArch::X86_64, OperatingSystem::Windows),
        Self::known(CpuArch::X86_64, OperatingSystem::FreeBsd),
        Self::known(CpuArch::Aarch64, OperatingSystem::Linux),
        Self::known(CpuArch::Aarch64, OperatingSystem::Darwin),
        Self::known(CpuArch::Aarch64, OperatingSystem::Windows),
        Self::known(CpuArch::Aarch64, OperatingSystem::FreeBsd),
        Self::known(CpuArch::I686, OperatingSystem::Linux),
        Self::known(CpuArch::I686, OperatingSystem::Windows),
        Self::known(CpuArch::I686, OperatingSystem::FreeBsd),
        Self::known(CpuArch::Armv7l, OperatingSystem::Linux),
        Self::known(CpuArch::Armv7l, OperatingSystem::FreeBsd),
        Self::known(CpuArch::Riscv64, OperatingSystem::Linux),
        Self::known(CpuArch::Riscv64, OperatingSystem::FreeBsd),
    ];

    /// A pair known at compile time to be supported.
    const fn known(arch: CpuArch, os: OperatingSystem) -> Self {
        assert!(supported(arch, os), "unsupported system pair");
        Self { arch, os }
    }

    /// Parses a system string such as `"x86_64-linux"` (exact, lowercase).
    ///
    /// # Errors
    ///
    /// A [`SystemArchitectureError`] if the string is not `{arch}-{os}`, a part is unknown, or
    /// the pair does not exist; its message lists the known systems.
    pub fn new(system: impl AsRef<str>) -> Result<Self, SystemArchitectureError> {
        let value = system.as_ref();
        let Some((arch_part, os_part)) = value.split_once('-') else {
            return Err(SystemArchitectureError::Malformed {
                value: value.to_owned(),
            });
        };
        let arch =
            CpuArch::parse(arch_part).ok_or_else(|| SystemArchitectureError::UnknownArch {
                value: value.to_owned(),
                arch: arch_part.to_owned(),
            })?;
        let os =
            OperatingSystem::parse(os_part).ok_or_else(|| SystemArchitectureError::UnknownOs {
                value: value.to_owned(),
                os: os_part.to_owned(),
            })?;
        Self::from_parts(arch, os).map_err(|_| SystemArchitectureError::UnsupportedPair {
            value: value.to_owned(),
            arch,
            os,
        })
    }

    /// The system of an architecture and an operating system.
    ///
    /// # Errors
    ///
    /// [`SystemArchitectureError::UnsupportedPair`] if the pair does not exist.
    pub fn from_parts(arch: CpuArch, os: OperatingSystem) -> Result<Self, SystemArchitectureError> {
        if supported(arch, os) {
            Ok(Self { arch, os })
        } else {
            Err(SystemArchitectureError::UnsupportedPair {
                value: format!("{arch}-{os}"),
                arch,
                os,
            })
        }
    }

    /// The CPU architecture.
    pub const fn arch(&self) -> CpuArch {
        self.arch
    }

    /// The operating system.
    pub const fn os(&self) -> OperatingSystem {
        self.os
    }
}

impl FromStr for SystemArchitecture {
    type Err = SystemArchitectureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for SystemArchitecture {
    type Error = SystemArchitectureError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for SystemArchitecture {
    type Error = SystemArchitectureError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<SystemArchitecture> for String {
    fn from(system: SystemArchitecture) -> Self {
        system.to_string()
    }
}

impl fmt::Display for SystemArchitecture {
    /// `{arch}-{os}`, e.g. `x86_64-linux`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.arch, self.os)
    }
}

impl fmt::Debug for SystemArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemArchitecture({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNSUPPORTED: [&str; 5] = [
        "i686-darwin",
        "armv7l-darwin",
        "riscv64-darwin",
        "armv7l-windows",
        "riscv64-windows",
    ];

    #[test]
    fn every_pair_is_either_known_or_unsupported() {
        let mut known = 0;
        for arch in CpuArch::ALL {
            for os in OperatingSystem::ALL {
                let text = format!("{arch}-{os}");
                match SystemArchitecture::new(&text) {
                    Ok(system) => {
                        known += 1;
                        assert_eq!(system.arch(), arch);
                        assert_eq!(system.os(), os);
                        assert_eq!(system.to_string(), text);
                        assert!(SystemArchitecture::ALL.contains(&system), "{text}");
                        assert!(!UNSUPPORTED.contains(&text.as_str()));
                    }
                    Err(SystemArchitectureError::UnsupportedPair { value, .. }) => {
                        assert_eq!(value, text);
                        assert!(UNSUPPORTED.contains(&text.as_str()), "{text}");
                    }
                    Err(e) => panic!("{text}: {e}"),
                }
            }
        }
        assert_eq!(known, SystemArchitecture::ALL.len());
    }

    #[test]
    fn constants() {
        assert_eq!(SystemArchitecture::X86_64_LINUX.to_string(), "x86_64-linux");
        assert_eq!(
            SystemArchitecture::AARCH64_LINUX.to_string(),
            "aarch64-linux"
        );
        assert_eq!(
            SystemArchitecture::X86_64_DARWIN.to_string(),
            "x86_64-darwin"
        );
        assert_eq!(
            SystemArchitecture::AARCH64_DARWIN.to_string(),
            "aarch64-darwin"
        );
        assert_eq!(
            SystemArchitecture::X86_64_WINDOWS.to_string(),
            "x86_64-windows"
        );
        assert_eq!(
            SystemArchitecture::AARCH64_WINDOWS.to_string(),
            "aarch64-windows"
        );
        assert_eq!(
            SystemArchitecture::X86_64_FREEBSD.to_string(),
            "x86_64-freebsd"
        );
        assert_eq!(SystemArchitecture::ARMV7L_LINUX.to_string(), "armv7l-linux");
        assert_eq!(
            SystemArchitecture::RISCV64_LINUX.to_string(),
            "riscv64-linux"
        );
        assert_eq!(SystemArchitecture::I686_LINUX.to_string(), "i686-linux");
        assert_eq!(
            SystemArchitecture::new("x86_64-linux").unwrap(),
            SystemArchitecture::X86_64_LINUX
        );
    }

    #[test]
    fn unsupported_pair_lists_known_systems() {
        let err = SystemArchitecture::new("riscv64-darwin").unwrap_err();
        assert_eq!(
            err,
            SystemArchitectureError::UnsupportedPair {
                value: "riscv64-darwin".into(),
                arch: CpuArch::Riscv64,
                os: OperatingSystem::Darwin,
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("\"riscv64-darwin\""), "{msg}");
        for system in SystemArchitecture::ALL {
            assert!(msg.contains(&system.to_string()), "{msg}");
        }
        assert!(
            msg.ends_with("x86_64-linux, x86_64-darwin, x86_64-windows, x86_64-freebsd, aarch64-linux, aarch64-darwin, aarch64-windows, aarch64-freebsd, i686-linux, i686-windows, i686-freebsd, armv7l-linux, armv7l-freebsd, riscv64-linux, riscv64-freebsd"),
            "{msg}"
        );
        assert!(matches!(
            SystemArchitecture::from_parts(CpuArch::Armv7l, OperatingSystem::Windows),
            Err(SystemArchitectureError::UnsupportedPair { .. })
        ));
    }

    #[test]
    fn malformed() {
        for bad in ["", "x86_64", "linux", "x86_64_linux"] {
            let err = SystemArchitecture::new(bad).unwrap_err();
            assert_eq!(
                err,
                SystemArchitectureError::Malformed {
                    value: bad.to_owned()
                }
            );
            assert!(err.to_string().contains("x86_64-linux"));
        }
    }

    #[test]
    fn unknown_parts() {
        assert_eq!(
            SystemArchitecture::new("sparc-linux"),
            Err(SystemArchitectureError::UnknownArch {
                value: "sparc-linux".into(),
                arch: "sparc".into()
            })
        );
        assert_eq!(
            SystemArchitecture::new("X86_64-linux"),
            Err(SystemArchitectureError::UnknownArch {
                value: "X86_64-linux".into(),
                arch: "X86_64".into()
            })
        );
        assert_eq!(
            SystemArchitecture::new("x86_64-unknown-linux-gnu"),
            Err(SystemArchitectureError::UnknownOs {
                value: "x86_64-unknown-linux-gnu".into(),
                os: "unknown-linux-gnu".into()
            })
        );
        assert_eq!(
            SystemArchitecture::new("aarch64-"),
            Err(SystemArchitectureError::UnknownOs {
                value: "aarch64-".into(),
                os: "".into()
            })
        );
        let msg = SystemArchitecture::new("x86_64-plan9")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("\"plan9\"") && msg.contains("aarch64-darwin"),
            "{msg}"
        );
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let system = SystemArchitecture::AARCH64_LINUX;
        let json = serde_json::to_string(&system).unwrap();
        assert_eq!(json, "\"aarch64-linux\"");
        assert_eq!(
            serde_json::from_str::<SystemArchitecture>(&json).unwrap(),
            system
        );
        assert!(serde_json::from_str::<SystemArchitecture>("\"riscv64-windows\"").is_err());
        assert!(serde_json::from_str::<SystemArchitecture>("\"x86_64\"").is_err());
    }

    #[test]
    fn conversions_and_display() {
        let system: SystemArchitecture = "i686-freebsd".parse().unwrap();
        assert_eq!(format!("{system:?}"), "SystemArchitecture(i686-freebsd)");
        assert_eq!(
            SystemArchitecture::try_from("i686-freebsd").unwrap(),
            system
        );
        assert_eq!(
            SystemArchitecture::try_from(String::from("i686-freebsd")).unwrap(),
            system
        );
        assert_eq!(String::from(system), "i686-freebsd");
    }
}
