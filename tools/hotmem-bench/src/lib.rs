//! HotMem side by side with vanilla virtio-mem, on top of `hotmem-host`:
//! the scale-up/scale-down scenario of `hotmemctl demo` ([`scenario`]),
//! the paper's experiments of `hotmemctl bench` ([`bench`]) with their SVG
//! plots ([`plot`], the only user of plotters), and the 1 GiB plug/unplug
//! walkthrough of `hotmemctl plug-demo` ([`plug_demo`]).

pub mod bench;
pub mod hotpath;
pub mod plot;
pub mod plug_demo;
pub mod scenario;
pub mod stats;
