//! Scenario files: a TOML list of VMs and how to schedule them.
//!
//! ```toml
//! policy = "fair"      # io | rr | fair
//! quantum = "1ms"      # 100us ..= 1s
//! timer = "posix"      # posix | timerfd
//! cpus = 1             # cores, one per host CPU; weights are shares of all
//!
//! [[vm]]
//! name = "neo"
//! guest = "neo"        # a built-in guest, or a path (relative to this file)
//! weight = 70
//! memory = "2M"
//! args = [1000, 250]
//! paused = false       # true: start paused, to be stepped or resumed
//! gdb = "127.0.0.1:1234" # serve gdb here (HOST:PORT or a socket path); starts stopped
//! mode = "long"        # real | protected | paged32 | long
//! load = 0x10000       # where a flat image's first byte goes
//! entry = 0x10000      # where it starts (default: load, or the ELF entry)
//! ports = { "0x10" = "print32bit" } # more ports that make hypercalls
//! show_ports = false   # true: other ports' accesses as plain lines
//! vcpus = 1            # 1 ..= 64 virtual CPUs, sharing the VM's weight
//! pin = [0]            # the cores it may run on (with cpus = N; default any)
//! ```
//!
//! Every mistake is reported with the file, line and key: unknown keys, weights
//! outside 1 to 10000, duplicate names, bad sizes and durations.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::TimerKind;
use crate::config::{MAX_QUANTUM, MIN_QUANTUM, Policy, check_weight};
use crate::debug::ListenAddress;
use crate::hypercall::PortMap;
use crate::hypercall::ports::parse_port;
use crate::os::files::{self, FileError};
use crate::units::{parse_address, parse_duration, parse_size};
use crate::vm::CpuMode;
use crate::vm::layout::{DEFAULT_MEMORY, MAX_GUEST_ARGS};
use crate::vm::memory::check_size;

/// The default scenario (Neo 70 / Morpheus 30), built into the binary.
pub const DEFAULT_SCENARIO: &str = include_str!("../assets/matrix.toml");
/// Name shown for the built-in default scenario in messages.
pub const DEFAULT_SCENARIO_NAME: &str = "assets/matrix.toml (built in)";
/// Largest scenario file read.
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;
/// Most VMs a run may have.
pub const MAX_VMS: usize = 1024;

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The policy, if the file sets one.
    pub policy: Option<Policy>,
    /// The quantum, if set.
    pub quantum: Option<Duration>,
    /// The timer, if set.
    pub timer: Option<TimerKind>,
    /// How long to run, if set.
    pub duration: Option<Duration>,
    /// The cores, if set (`cpus = 2`; checked against the host's at the start).
    pub cpus: Option<u32>,
    /// The VMs, in file order.
    pub vms: Vec<ScenarioVm>,
}

/// One VM of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioVm {
    /// Unique name.
    pub name: String,
    /// Built-in guest name, or a path already resolved against the file's folder.
    pub guest: String,
    /// Weight (1 ..= 10000; default 1).
    pub weight: f64,
    /// The weight was given (a restored snapshot keeps its own otherwise).
    pub weight_given: bool,
    /// Memory in bytes.
    pub memory: u64,
    /// Guest arguments.
    pub args: Vec<u64>,
    /// Start paused, to be stepped or resumed (`paused = true`).
    pub paused: bool,
    /// Serve gdb for it here (`gdb = "127.0.0.1:1234"`).
    pub gdb: Option<ListenAddress>,
    /// Its CPU mode, if set (else the guest's own, else long).
    pub mode: Option<CpuMode>,
    /// Where its flat image is loaded, if set.
    pub load: Option<u64>,
    /// Where it starts, if set.
    pub entry: Option<u64>,
    /// Its mapped ports and `show_ports`.
    pub ports: PortMap,
    /// Its virtual CPUs.
    pub vcpus: u32,
    /// The cores it may run on (`pin = [0, 1]`; empty: any).
    pub pin: Vec<usize>,
}

impl ScenarioVm {
    /// A VM running `guest` with every setting at its default.
    pub fn new(name: impl Into<String>, guest: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            guest: guest.into(),
            weight: 1.0,
            weight_given: false,
            memory: DEFAULT_MEMORY,
            args: Vec::new(),
            paused: false,
            gdb: None,
            mode: None,
            load: None,
            entry: None,
            ports: PortMap::default(),
            vcpus: 1,
            pin: Vec::new(),
        }
    }
}

/// The cores a VM is pinned to, checked: numbers from 0, each once, at
/// least one (whether the run has them is checked when it starts).
pub fn check_pin(cores: &[i64]) -> Result<Vec<usize>, String> {
    if cores.is_empty() {
        return Err("an empty pin allows no core: give at least one (cores count from 0), or leave pin out".into());
    }
    let mut checked = Vec::with_capacity(cores.len());
    for &core in cores {
        let core = usize::try_from(core).map_err(|_| format!("{core} is not a core: cores count from 0"))?;
        if core >= MAX_CPUS as usize {
            return Err(format!("{core} is not a core: a run has at most {MAX_CPUS}"));
        }
        if checked.contains(&core) {
            return Err(format!("core {core} is named twice"));
        }
        checked.push(core);
    }
    checked.sort_unstable();
    Ok(checked)
}

/// A pin written as a list, `0,1` (`--pin NAME=0,1`, `pin NAME 0,1`), checked as [`check_pin`].
pub fn parse_pin(text: &str) -> Result<Vec<usize>, String> {
    let cores: Vec<i64> = text
        .split(',')
        .map(|core| {
            let core = core.trim();
            core.parse().map_err(|_| format!("'{}' is not a core number", crate::console::escape_input(core)))
        })
        .collect::<Result<_, _>>()?;
    check_pin(&cores)
}

/// A VM's vCPU count, checked: 1 to [`crate::vm::MAX_VCPUS`].
pub fn check_vcpus(count: i64) -> Result<u32, String> {
    let most = crate::vm::MAX_VCPUS;
    match u32::try_from(count) {
        Ok(count) if (1..=most).contains(&count) => Ok(count),
        _ => Err(format!("{count} vCPUs: a VM has 1 to {most}")),
    }
}

/// How a guest names a snapshot to restore: `snapshot:FILE`.
pub const SNAPSHOT_PREFIX: &str = "snapshot:";

/// A scenario that cannot be used, located in its file.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{file}:{line}: {key}: {message}")]
pub struct ScenarioError {
    /// The file (as given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The key at fault (or `file` when it is about the whole file).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// A scenario as written, before validation (also the `[scenario]` table of
/// a lesson file).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSpec {
    policy: Option<Policy>,
    quantum: Option<Spanned<String>>,
    timer: Option<TimerKind>,
    duration: Option<Spanned<String>>,
    cpus: Option<Spanned<CountSpec>>,
    #[serde(default)]
    vm: Vec<Spanned<VmSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmSpec {
    name: Spanned<String>,
    guest: Spanned<String>,
    weight: Option<Spanned<f64>>,
    memory: Option<Spanned<SizeSpec>>,
    args: Option<Spanned<Vec<u64>>>,
    #[serde(default)]
    paused: bool,
    gdb: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    load: Option<Spanned<SizeSpec>>,
    entry: Option<Spanned<SizeSpec>>,
    ports: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    #[serde(default)]
    show_ports: bool,
    vcpus: Option<Spanned<CountSpec>>,
    pin: Option<Spanned<Vec<i64>>>,
}

/// A count as written: a number, or anything else (said to be no number).
#[derive(Deserialize)]
#[serde(untagged)]
enum CountSpec {
    Number(i64),
    Other(toml::Value),
}

/// A number written as a TOML integer (`0x10000`) or a string (`"2M"`, `"0x10000"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Bytes(u64),
    Text(String),
}

impl SizeSpec {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Self::Bytes(bytes) => Ok(*bytes),
            Self::Text(text) => parse_size(text),
        }
    }

    fn address(&self) -> Result<u64, String> {
        match self {
            Self::Bytes(bytes) => Ok(*bytes),
            Self::Text(text) => parse_address(text),
        }
    }
}

/// Reads and validates the scenario at `path`.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = read_limited(path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &path.display().to_string(), &base)
}

/// Reads a scenario or lesson file of at most 1 MiB.
pub(crate) fn read_limited(path: &Path) -> Result<String, ScenarioError> {
    let file = path.display().to_string();
    let whole_file = |message: String| ScenarioError { file: file.clone(), line: 1, key: "file".into(), message };
    let bytes = files::read_regular(path, MAX_SCENARIO_BYTES).map_err(|error| match error {
        FileError::TooLarge { .. } => {
            whole_file("it is larger than 1 MiB, the most a scenario or lesson file may be".into())
        }
        error => whole_file(format!("cannot read it: {error}")),
    })?;
    String::from_utf8(bytes).map_err(|_| whole_file("it is not UTF-8 text; scenario and lesson files are TOML".into()))
}

/// An error at byte `span` of `text`, the file `file`.
pub(crate) fn located(text: &str, file: &str, span: Range<usize>, key: &str, message: String) -> ScenarioError {
    ScenarioError { file: file.to_string(), line: line_of(text, span.start), key: key.to_string(), message }
}

/// Deserializes TOML `text`, locating any error in it.
pub(crate) fn from_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ScenarioError> {
    toml::from_str(text).map_err(|error| {
        let span = error.span().unwrap_or(0..0);
        let key = text.get(span.clone()).filter(|k| !k.is_empty() && k.len() < 40).unwrap_or("file");
        located(text, file, span, key, error.message().trim().to_string())
    })
}

/// The most cores a scenario may ask for (the host's CPUs bound it further).
pub const MAX_CPUS: u32 = 1024;

/// The built-in default scenario.
pub fn default_scenario() -> Scenario {
    parse(DEFAULT_SCENARIO, DEFAULT_SCENARIO_NAME, Path::new("")).expect("the built-in scenario is valid")
}

/// Parses scenario `text` (named `file` in errors; paths relative to `base`).
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    from_spec(&from_toml(text, file)?, text, file, base)
}

/// Validates a scenario read from `text` (for the lines of its errors).
pub(crate) fn from_spec(spec: &FileSpec, text: &str, file: &str, base: &Path) -> Result<Scenario, ScenarioError> {
    let at = |span: Range<usize>, key: &str, message: String| located(text, file, span, key, message);

    let quantum = match &spec.quantum {
        Some(text) => {
            let quantum = parse_duration(text.get_ref()).map_err(|m| at(text.span(), "quantum", m))?;
            if !(MIN_QUANTUM..=MAX_QUANTUM).contains(&quantum) {
                return Err(at(text.span(), "quantum", "must be between 100us and 1s".into()));
            }
            Some(quantum)
        }
        None => None,
    };
    let duration = match &spec.duration {
        Some(text) => Some(parse_duration(text.get_ref()).map_err(|m| at(text.span(), "duration", m))?),
        None => None,
    };
    let cpus = match &spec.cpus {
        Some(count) => Some(
            match count.get_ref() {
                CountSpec::Number(number) if (1..=i64::from(MAX_CPUS)).contains(number) => Ok(*number as u32),
                CountSpec::Number(number) => Err(format!("{number} cores: give 1 or more, at most this host's CPUs")),
                CountSpec::Other(other) => Err(format!("{other} is not a number of cores: give 1 or more")),
            }
            .map_err(|message| at(count.span(), "cpus", message))?,
        ),
        None => None,
    };
    if spec.vm.len() > MAX_VMS {
        return Err(at(0..0, "vm", format!("{} VMs; a run has at most {MAX_VMS}", spec.vm.len())));
    }

    let mut vms: Vec<ScenarioVm> = Vec::with_capacity(spec.vm.len());
    for entry in &spec.vm {
        let vm = entry.get_ref();
        let name = vm.name.get_ref();
        if let Err(message) = check_vm_name(name) {
            return Err(at(vm.name.span(), "name", message));
        }
        if vms.iter().any(|other| &other.name == name) {
            return Err(at(vm.name.span(), "name", format!("a second VM is called '{name}'; names must be unique")));
        }
        let weight = match &vm.weight {
            Some(weight) if check_weight(*weight.get_ref()).is_err() => {
                return Err(at(
                    weight.span(),
                    "weight",
                    format!("{} is out of range: give a number from 1 to 10000", weight.get_ref()),
                ));
            }
            Some(weight) => *weight.get_ref(),
            None => 1.0,
        };
        let memory = match &vm.memory {
            Some(memory) => {
                let bytes = memory.get_ref().bytes().map_err(|m| at(memory.span(), "memory", m))?;
                check_size(bytes).map_err(|error| at(memory.span(), "memory", error.to_string()))?
            }
            None => DEFAULT_MEMORY,
        };
        let args = match &vm.args {
            Some(args) if args.get_ref().len() > MAX_GUEST_ARGS => {
                return Err(at(args.span(), "args", format!("at most {MAX_GUEST_ARGS} guest arguments")));
            }
            Some(args) => args.get_ref().clone(),
            None => Vec::new(),
        };
        let gdb = match &vm.gdb {
            Some(address) => {
                Some(ListenAddress::parse(address.get_ref()).map_err(|message| at(address.span(), "gdb", message))?)
            }
            None => None,
        };
        let mode = match &vm.mode {
            Some(mode) => Some(CpuMode::parse(mode.get_ref()).map_err(|message| at(mode.span(), "mode", message))?),
            None => None,
        };
        let address = |spec: &Option<Spanned<SizeSpec>>, key: &str| match spec {
            Some(value) => value.get_ref().address().map(Some).map_err(|message| at(value.span(), key, message)),
            None => Ok(None),
        };
        let (load, entry) = (address(&vm.load, "load")?, address(&vm.entry, "entry")?);
        let mut ports = PortMap::default();
        ports.show_unknown = vm.show_ports;
        if let Some(map) = &vm.ports {
            for (port, call) in map.get_ref() {
                let port = parse_port(port).map_err(|message| at(map.span(), "ports", message))?;
                ports.map(port, call).map_err(|message| at(map.span(), "ports", message))?;
            }
        }
        let vcpus = match &vm.vcpus {
            Some(count) => match count.get_ref() {
                CountSpec::Number(number) => check_vcpus(*number),
                CountSpec::Other(other) => Err(format!("{other} is not a number of vCPUs: give 1 to 64")),
            }
            .map_err(|message| at(count.span(), "vcpus", message))?,
            None => 1,
        };
        let pin = match &vm.pin {
            Some(cores) => check_pin(cores.get_ref()).map_err(|message| at(cores.span(), "pin", message))?,
            None => Vec::new(),
        };
        let guest = resolve_guest_path(vm.guest.get_ref(), base);
        vms.push(ScenarioVm {
            name: name.clone(),
            guest,
            weight,
            weight_given: vm.weight.is_some(),
            memory,
            args,
            paused: vm.paused,
            gdb,
            mode,
            load,
            entry,
            ports,
            vcpus,
            pin,
        });
    }
    Ok(Scenario { policy: spec.policy, quantum, timer: spec.timer, duration, cpus, vms })
}

/// Checks a VM name: 1-32 letters, digits, '-', '_' or '.'.
pub fn check_vm_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 32
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(format!("VM name '{}' must be 1-32 letters, digits, '-', '_' or '.'", crate::console::escape_input(name)))
    }
}

/// A guest that is not built in is a path, taken relative to the scenario's
/// folder (also the FILE of `snapshot:FILE`).
fn resolve_guest_path(guest: &str, base: &Path) -> String {
    if let Some(file) = guest.strip_prefix(SNAPSHOT_PREFIX) {
        return format!("{SNAPSHOT_PREFIX}{}", resolve_guest_path(file, base));
    }
    if crate::guests::builtin(guest).is_some() || Path::new(guest).is_absolute() || base.as_os_str().is_empty() {
        return guest.to_string();
    }
    let path: PathBuf = base.join(guest);
    path.display().to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Scenario, ScenarioError> {
        parse(text, "test.toml", Path::new("/scenarios"))
    }

    #[test]
    fn a_written_pin_is_a_checked_list_of_cores() {
        assert_eq!(parse_pin("1,0"), Ok(vec![0, 1]));
        assert_eq!(parse_pin(" 2 "), Ok(vec![2]));
        assert_eq!(parse_pin("0,x"), Err("'x' is not a core number".to_string()));
        assert_eq!(parse_pin("1,1"), Err("core 1 is named twice".to_string()));
        assert!(parse_pin("-1").unwrap_err().contains("cores count from 0"));
    }

    #[test]
    fn a_full_scenario_parses() {
        let scenario = parse_str(
            "policy = \"rr\"\nquantum = \"2ms\"\ntimer = \"timerfd\"\nduration = \"3s\"\n\
             [[vm]]\nname = \"a\"\nguest = \"ticker\"\nweight = 70\nmemory = \"4M\"\nargs = [500]\n\
             [[vm]]\nname = \"b\"\nguest = \"my/guest.elf\"\nmemory = 2097152\npaused = true\n",
        )
        .unwrap();
        assert_eq!(scenario.policy, Some(Policy::Rr));
        assert_eq!(scenario.quantum, Some(Duration::from_millis(2)));
        assert_eq!(scenario.timer, Some(TimerKind::Timerfd));
        assert_eq!(scenario.duration, Some(Duration::from_secs(3)));
        assert_eq!(
            scenario.vms[0],
            ScenarioVm {
                weight: 70.0,
                weight_given: true,
                memory: 4 << 20,
                args: vec![500],
                ..ScenarioVm::new("a", "ticker")
            }
        );
        assert_eq!(scenario.vms[1].guest, "/scenarios/my/guest.elf");
        assert_eq!((scenario.vms[1].weight, scenario.vms[1].memory), (1.0, 2 << 20));
        assert!(scenario.vms[1].paused, "paused = true starts the VM paused");
        assert!(!scenario.vms[1].weight_given);
    }

    #[test]
    fn vcpus_are_1_to_64_and_a_number() {
        let four = parse_str("[[vm]]\nname = \"a\"\nguest = \"pair\"\nvcpus = 4\n").unwrap();
        assert_eq!(four.vms[0].vcpus, 4);
        assert_eq!(parse_str("[[vm]]\nname = \"a\"\nguest = \"spin\"\n").unwrap().vms[0].vcpus, 1);
        for (text, says) in [("0", "0 vCPUs: a VM has 1 to 64"), ("65", "65 vCPUs"), ("-1", "-1 vCPUs")] {
            let error = parse_str(&format!("[[vm]]\nname = \"a\"\nguest = \"pair\"\nvcpus = {text}\n")).unwrap_err();
            assert_eq!((error.line, error.key.as_str()), (4, "vcpus"), "{error}");
            assert!(error.message.contains(says), "{error}");
        }
        let word = parse_str("[[vm]]\nname = \"a\"\nguest = \"pair\"\nvcpus = \"two\"\n").unwrap_err();
        assert_eq!((word.line, word.key.as_str()), (4, "vcpus"), "{word}");
        assert!(word.message.contains("\"two\" is not a number of vCPUs"), "{word}");
    }

    #[test]
    fn a_snapshot_guest_is_found_beside_the_scenario() {
        let scenario = parse_str("[[vm]]\nname = \"a\"\nguest = \"snapshot:saved/a-1.snap\"\n").unwrap();
        assert_eq!(scenario.vms[0].guest, "snapshot:/scenarios/saved/a-1.snap");
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        let unknown =
            parse_str("policy = \"fair\"\n[[vm]]\nname = \"a\"\nguest = \"spin\"\ncolour = \"red\"\n").unwrap_err();
        assert_eq!((unknown.file.as_str(), unknown.line, unknown.key.as_str()), ("test.toml", 5, "colour"));
        assert!(unknown.message.contains("unknown field"), "{unknown}");

        let weight = parse_str("[[vm]]\nname = \"a\"\nguest = \"spin\"\nweight = 0\n").unwrap_err();
        assert_eq!((weight.line, weight.key.as_str()), (4, "weight"));
        assert_eq!(weight.to_string(), "test.toml:4: weight: 0 is out of range: give a number from 1 to 10000");

        let negative = parse_str("[[vm]]\nname = \"a\"\nguest = \"spin\"\nweight = -3.5\n").unwrap_err();
        assert_eq!(negative.key, "weight");

        let duplicate =
            parse_str("[[vm]]\nname = \"a\"\nguest = \"spin\"\n[[vm]]\nname = \"a\"\nguest = \"part1\"\n").unwrap_err();
        assert_eq!((duplicate.line, duplicate.key.as_str()), (5, "name"));
        assert!(duplicate.message.contains("second VM is called 'a'"));

        let memory = parse_str("[[vm]]\nname = \"a\"\nguest = \"spin\"\nmemory = \"3M\"\n").unwrap_err();
        assert_eq!((memory.line, memory.key.as_str()), (4, "memory"));

        let quantum = parse_str("quantum = \"10us\"\n").unwrap_err();
        assert_eq!((quantum.line, quantum.key.as_str()), (1, "quantum"));

        let policy = parse_str("\n\npolicy = \"lottery\"\n").unwrap_err();
        assert_eq!(policy.line, 3);
        assert!(policy.message.contains("unknown variant"), "{policy}");

        let syntax = parse_str("[[vm]\n").unwrap_err();
        assert_eq!(syntax.line, 1);
    }

    #[test]
    fn the_built_in_scenario_is_neo_70_morpheus_30_fair() {
        let scenario = default_scenario();
        assert_eq!(scenario.policy, Some(Policy::Fair));
        let vms: Vec<_> = scenario.vms.iter().map(|vm| (vm.name.as_str(), vm.guest.as_str(), vm.weight)).collect();
        assert_eq!(vms, [("neo", "neo", 70.0), ("morpheus", "morpheus", 30.0)]);
    }

    #[test]
    fn every_shipped_scenario_is_valid() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
        let mut seen = 0;
        for entry in std::fs::read_dir(assets).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                load(&path).unwrap_or_else(|error| panic!("{error}"));
                seen += 1;
            }
        }
        assert!(seen >= 4, "only {seen} scenarios in assets/");
    }

    #[test]
    fn a_course_guest_gets_its_mode_load_entry_and_ports() {
        let text = "[[vm]]\nname = \"hw\"\nguest = \"guest16.img\"\nmode = \"real\"\nload = 0x0\nentry = \"0x100\"\n\
                    ports = { \"0x10\" = \"print32bit\", \"0xE7\" = \"HC_numExits\" }\nshow_ports = true\n";
        let vm = &parse(text, "c.toml", Path::new("")).unwrap().vms[0];
        assert_eq!((vm.mode, vm.load, vm.entry), (Some(CpuMode::Real), Some(0), Some(0x100)));
        assert_eq!(vm.ports.entries().collect::<Vec<_>>(), [(0x10, "print32bit"), (0xE7, "numExits")]);
        assert!(vm.ports.show_unknown);
        let mode = parse(&text.replace("\"real\"", "\"v86\""), "c.toml", Path::new("")).unwrap_err();
        assert_eq!((mode.line, mode.key.as_str()), (4, "mode"));
        assert!(mode.message.contains("give real, protected, paged32 or long"), "{mode}");
        let port = parse(&text.replace("0x10", "0x10000"), "c.toml", Path::new("")).unwrap_err();
        assert_eq!((port.line, port.key.as_str()), (7, "ports"));
        let call = parse(&text.replace("HC_numExits", "HC_nope"), "c.toml", Path::new("")).unwrap_err();
        assert!(call.message.starts_with("unknown hypercall 'HC_nope'"), "{call}");
        let load = parse(&text.replace("load = 0x0", "load = \"low\""), "c.toml", Path::new("")).unwrap_err();
        assert_eq!(load.key, "load");
    }

    #[test]
    fn a_vm_can_ask_for_a_gdb_server_and_a_bad_address_is_located() {
        let text = "[[vm]]\nname = \"a\"\nguest = \"spin\"\ngdb = \"127.0.0.1:1234\"\n";
        let scenario = parse(text, "s.toml", Path::new("")).unwrap();
        assert_eq!(scenario.vms[0].gdb, Some(ListenAddress::Tcp("127.0.0.1:1234".into())));
        let error = parse(&text.replace("127.0.0.1:1234", "1234"), "s.toml", Path::new("")).unwrap_err();
        assert!(error.to_string().starts_with("s.toml:4: gdb: '1234' is neither HOST:PORT"), "{error}");
    }
}
