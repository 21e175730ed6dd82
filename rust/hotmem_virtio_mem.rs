// SPDX-License-Identifier: GPL-2.0

//! HotMem virtio-mem driver.
//!
//! Plugs and unplugs the memory of a virtio-mem device in whole HotMem
//! partitions.  This is the module skeleton: it loads, announces itself and
//! unloads cleanly; the device handling arrives with the HotMem mm series
//! and the `kernel::virtio` abstraction.

use kernel::prelude::*;

module! {
    type: HotMemVirtioMem,
    name: "hotmem_virtio_mem",
    author: "HotMem developers",
    description: "virtio-mem driver that plugs and unplugs whole HotMem partitions",
    license: "GPL",
}

struct HotMemVirtioMem;

impl kernel::Module for HotMemVirtioMem {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        pr_info!("loaded\n");
        Ok(Self)
    }
}

impl Drop for HotMemVirtioMem {
    fn drop(&mut self) {
        pr_info!("unloaded\n");
    }
}
