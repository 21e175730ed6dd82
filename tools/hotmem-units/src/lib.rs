//! The one syntax for sizes and durations of every HotMem program, host
//! and guest: sizes are binary (`4096`, `512M`, `1G`, `2MiB`), durations
//! are humantime's (`30s`, `1m30s`, `250ms`, `2h`), so that `--timeout 30s`
//! means the same to `hotmemctl`, `hotmem-run` and the workloads.

mod duration;
mod size;

pub use duration::{format_duration, parse_duration, DurationError};
pub use size::{parse_size, parse_size_nonzero, qemu_size, HumanSize, SizeError};
