//! `Config::validate` and the partition `Geometry` it returns.

use hotmem_vmem_logic::wire::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const MEMORY_BLOCK: u64 = 128 * MIB;
const PARTITION: u64 = 256 * MIB;

/// What QEMU gives a guest with `-device virtio-mem,size=...` on x86: 2 MiB
/// blocks, the region above 4 GiB.
fn qemu_like() -> Config {
    Config {
        block_size: 2 * MIB,
        node_id: 0,
        addr: 4 * GIB,
        region_size: 4 * GIB,
        usable_region_size: GIB,
        plugged_size: 0,
        requested_size: 512 * MIB,
    }
}

fn validate(config: &Config) -> Result<Geometry, ConfigError> {
    config.validate(MEMORY_BLOCK, PARTITION)
}

#[test]
fn good_config() {
    let g = validate(&qemu_like()).unwrap();
    assert_eq!(g.block_size(), 2 * MIB);
    assert_eq!(g.partition_size(), PARTITION);
    assert_eq!(g.region_addr(), 4 * GIB);
    assert_eq!(g.first_partition_addr(), 4 * GIB);
    assert_eq!(g.nr_partitions(), 16);
    assert_eq!(g.blocks_per_partition(), 128);
}

#[test]
fn unaligned_region_uses_the_aligned_sub_range() {
    // 4 GiB + 128 MiB .. 5 GiB + 128 MiB: partitions at 4.25, 4.5, 4.75 GiB.
    let config = Config {
        addr: 4 * GIB + 128 * MIB,
        region_size: GIB,
        usable_region_size: GIB,
        ..qemu_like()
    };
    let g = validate(&config).unwrap();
    assert_eq!(g.first_partition_addr(), 4 * GIB + PARTITION);
    assert_eq!(g.nr_partitions(), 3);
    assert_eq!(g.region_addr(), 4 * GIB + 128 * MIB);
}

#[test]
fn smallest_and_largest_shapes() {
    // One device block per partition, partition = memory block.
    let config = Config {
        block_size: MEMORY_BLOCK,
        region_size: MEMORY_BLOCK,
        usable_region_size: MEMORY_BLOCK,
        requested_size: 0,
        ..qemu_like()
    };
    let g = config.validate(MEMORY_BLOCK, MEMORY_BLOCK).unwrap();
    assert_eq!((g.nr_partitions(), g.blocks_per_partition()), (1, 1));

    // 32768 blocks of 4 KiB in a 128 MiB partition: the most that are a
    // power of two and fit u16.
    let config = Config {
        block_size: 4 * KIB,
        ..qemu_like()
    };
    let g = config.validate(MEMORY_BLOCK, MEMORY_BLOCK).unwrap();
    assert_eq!(g.blocks_per_partition(), 32768);
    assert_eq!(g.nr_partitions(), 32);
}

#[test]
fn partition_at_the_top_of_the_address_space() {
    // The region ends one block before 2^64; one partition fits below it.
    let addr = 0u64.wrapping_sub(2 * PARTITION);
    let config = Config {
        addr,
        region_size: 2 * PARTITION - 2 * MIB,
        usable_region_size: 2 * PARTITION - 2 * MIB,
        requested_size: 0,
        ..qemu_like()
    };
    let g = validate(&config).unwrap();
    assert_eq!(g.first_partition_addr(), addr);
    assert_eq!(g.nr_partitions(), 1);
    assert_eq!(
        g.partition_range(0),
        Ok(BlockRange {
            addr,
            nb_blocks: 128
        })
    );
    assert_eq!(g.partition_containing(u64::MAX), None);
    assert_eq!(g.partition_containing(addr + PARTITION - 1), Some(0));
    assert_eq!(g.usable_partitions(u64::MAX), 1);
}

#[test]
fn invalid_memory_block_size() {
    for mbs in [0, 3, 100 * MIB, u64::MAX] {
        assert_eq!(
            qemu_like().validate(mbs, PARTITION),
            Err(ConfigError::MemoryBlockSize {
                memory_block_size: mbs
            })
        );
    }
}

#[test]
fn invalid_partition_size() {
    for partition_size in [0, 64 * MIB, 384 * MIB, 3, u64::MAX] {
        assert_eq!(
            qemu_like().validate(MEMORY_BLOCK, partition_size),
            Err(ConfigError::PartitionSize {
                partition_size,
                memory_block_size: MEMORY_BLOCK
            }),
            "{partition_size:#x}"
        );
    }
    // 2^63 is a power-of-two multiple: a valid partition size (this config
    // fails later, on the block count).
    assert!(matches!(
        qemu_like().validate(MEMORY_BLOCK, 1 << 63),
        Err(ConfigError::TooManyBlocksPerPartition { .. })
    ));
}

#[test]
fn invalid_block_size() {
    for block_size in [0, 3 * MIB, u64::MAX, (1 << 63) + 1] {
        let config = Config {
            block_size,
            ..qemu_like()
        };
        assert_eq!(
            validate(&config),
            Err(ConfigError::BlockSizeNotPowerOfTwo { block_size })
        );
    }
    for block_size in [512 * MIB, 1 << 63] {
        let config = Config {
            block_size,
            ..qemu_like()
        };
        assert_eq!(
            validate(&config),
            Err(ConfigError::BlockSizeExceedsPartition {
                block_size,
                partition_size: PARTITION
            })
        );
    }
}

/// Access to one field of a configuration.
type FieldRef = fn(&mut Config) -> &mut u64;

#[test]
fn every_field_must_be_block_aligned() {
    let odd = MIB; // half a 2 MiB block
    let cases: [(ConfigField, FieldRef); 5] = [
        (ConfigField::Addr, |c| &mut c.addr),
        (ConfigField::RegionSize, |c| &mut c.region_size),
        (ConfigField::UsableRegionSize, |c| &mut c.usable_region_size),
        (ConfigField::PluggedSize, |c| &mut c.plugged_size),
        (ConfigField::RequestedSize, |c| &mut c.requested_size),
    ];
    for (field, get) in cases {
        let mut config = qemu_like();
        *get(&mut config) += odd;
        let value = *get(&mut config);
        assert_eq!(
            validate(&config),
            Err(ConfigError::Misaligned {
                field,
                value,
                block_size: 2 * MIB
            }),
            "{field:?}"
        );
    }
}

#[test]
fn region_must_not_overflow() {
    let block = 2 * MIB;
    for (addr, region_size) in [
        (1 << 63, 1 << 63),              // ends exactly at 2^64
        (u64::MAX - (block - 1), block), // last block, ends at 2^64
        (u64::MAX - (block - 1), u64::MAX - (block - 1)),
    ] {
        let config = Config {
            addr,
            region_size,
            usable_region_size: 0,
            requested_size: 0,
            ..qemu_like()
        };
        assert_eq!(
            validate(&config),
            Err(ConfigError::RegionOverflow { addr, region_size }),
            "{addr:#x} + {region_size:#x}"
        );
    }
}

#[test]
fn sizes_must_be_ordered() {
    let config = Config {
        usable_region_size: 4 * GIB + 2 * MIB,
        ..qemu_like()
    };
    assert_eq!(
        validate(&config),
        Err(ConfigError::UsableExceedsRegion {
            usable_region_size: 4 * GIB + 2 * MIB,
            region_size: 4 * GIB
        })
    );
    let config = Config {
        plugged_size: GIB + 2 * MIB,
        ..qemu_like()
    };
    assert_eq!(
        validate(&config),
        Err(ConfigError::PluggedExceedsUsable {
            plugged_size: GIB + 2 * MIB,
            usable_region_size: GIB
        })
    );
    let config = Config {
        requested_size: GIB + 2 * MIB,
        ..qemu_like()
    };
    assert_eq!(
        validate(&config),
        Err(ConfigError::RequestedExceedsUsable {
            requested_size: GIB + 2 * MIB,
            usable_region_size: GIB
        })
    );
    // Equal is fine.
    let config = Config {
        usable_region_size: 4 * GIB,
        plugged_size: 4 * GIB,
        requested_size: 4 * GIB,
        ..qemu_like()
    };
    assert!(validate(&config).is_ok());
}

#[test]
fn blocks_per_partition_must_fit_u16() {
    // 4 KiB blocks in a 256 MiB partition: 65536 blocks, one too many.
    let config = Config {
        block_size: 4 * KIB,
        ..qemu_like()
    };
    assert_eq!(
        validate(&config),
        Err(ConfigError::TooManyBlocksPerPartition {
            blocks: 65536,
            block_size: 4 * KIB,
            partition_size: PARTITION
        })
    );
    let config = Config {
        block_size: 1,
        ..qemu_like()
    };
    assert_eq!(
        config.validate(MEMORY_BLOCK, 1 << 63),
        Err(ConfigError::TooManyBlocksPerPartition {
            blocks: 1 << 63,
            block_size: 1,
            partition_size: 1 << 63
        })
    );
}

#[test]
fn at_least_one_whole_partition() {
    let none = |addr: u64, region_size: u64| {
        let config = Config {
            addr,
            region_size,
            usable_region_size: 0,
            plugged_size: 0,
            requested_size: 0,
            ..qemu_like()
        };
        assert_eq!(
            validate(&config),
            Err(ConfigError::NoWholePartition {
                addr,
                region_size,
                partition_size: PARTITION
            }),
            "{addr:#x} + {region_size:#x}"
        );
    };
    none(4 * GIB, 0);
    none(4 * GIB, PARTITION - 2 * MIB);
    // Big enough, but straddling a partition boundary.
    none(4 * GIB + 128 * MIB, PARTITION);
    // Rounding the start up would overflow.
    none(u64::MAX - (2 * MIB - 1), 0);
    none(0u64.wrapping_sub(PARTITION) + 2 * MIB, PARTITION - 4 * MIB);
}

#[test]
fn first_error_wins() {
    let config = Config {
        block_size: 3,
        addr: 1,
        region_size: u64::MAX,
        usable_region_size: u64::MAX,
        plugged_size: u64::MAX,
        requested_size: u64::MAX,
        node_id: 0,
    };
    assert_eq!(
        config.validate(0, 0),
        Err(ConfigError::MemoryBlockSize {
            memory_block_size: 0
        })
    );
    assert!(matches!(
        config.validate(MEMORY_BLOCK, 0),
        Err(ConfigError::PartitionSize { .. })
    ));
    assert!(matches!(
        config.validate(MEMORY_BLOCK, PARTITION),
        Err(ConfigError::BlockSizeNotPowerOfTwo { .. })
    ));
    let config = Config {
        block_size: 2,
        ..config
    };
    assert!(matches!(
        config.validate(MEMORY_BLOCK, PARTITION),
        Err(ConfigError::Misaligned {
            field: ConfigField::Addr,
            ..
        })
    ));
}

#[test]
fn all_u64_max_never_panics() {
    let config = Config {
        block_size: u64::MAX,
        node_id: u16::MAX,
        addr: u64::MAX,
        region_size: u64::MAX,
        usable_region_size: u64::MAX,
        plugged_size: u64::MAX,
        requested_size: u64::MAX,
    };
    for mbs in [0, 1, MEMORY_BLOCK, 1 << 63, u64::MAX] {
        for partition in [0, 1, PARTITION, 1 << 63, u64::MAX] {
            assert!(config.validate(mbs, partition).is_err());
        }
    }
}

#[test]
fn revalidation_after_a_size_change_gives_the_same_geometry() {
    let at_probe = validate(&qemu_like()).unwrap();
    let later = Config {
        usable_region_size: 3 * GIB,
        plugged_size: GIB,
        requested_size: 2 * GIB,
        ..qemu_like()
    };
    assert_eq!(validate(&later), Ok(at_probe));
    let moved = Config {
        addr: 8 * GIB,
        ..qemu_like()
    };
    assert_ne!(validate(&moved), Ok(at_probe));
}

#[test]
fn partition_index_and_range_are_inverse() {
    let config = Config {
        addr: 4 * GIB + 128 * MIB,
        region_size: 2 * GIB,
        usable_region_size: 2 * GIB,
        ..qemu_like()
    };
    let g = validate(&config).unwrap();
    assert_eq!(g.nr_partitions(), 7);
    for i in 0..g.nr_partitions() {
        let range = g.partition_range(i).unwrap();
        assert_eq!(range.addr, 4 * GIB + PARTITION * (i as u64 + 1));
        assert_eq!(range.nb_blocks, 128);
        assert_eq!(range.addr % PARTITION, 0, "naturally aligned");
        assert_eq!(g.partition_index(range), Ok(i));
        assert_eq!(g.partition_containing(range.addr), Some(i));
        assert_eq!(g.partition_containing(range.addr + PARTITION - 1), Some(i));
        assert_eq!(g.plug_request(i), Ok(Request::Plug(range)));
        assert_eq!(g.unplug_request(i), Ok(Request::Unplug(range)));
        assert_eq!(g.state_request(i), Ok(Request::State(range)));
    }
}

#[test]
fn geometry_rejects_what_is_not_a_partition() {
    let g = validate(&qemu_like()).unwrap();
    let n = g.nr_partitions();
    for index in [n, n + 1, usize::MAX] {
        let err = GeometryError::IndexOutOfRange {
            index,
            nr_partitions: n,
        };
        assert_eq!(g.partition_range(index), Err(err));
        assert_eq!(g.plug_request(index), Err(err));
        assert_eq!(g.unplug_request(index), Err(err));
        assert_eq!(g.state_request(index), Err(err));
    }
    let start = g.first_partition_addr();
    for addr in [
        0,
        start - PARTITION,
        start + 2 * MIB,
        start + PARTITION * n as u64,
        u64::MAX,
    ] {
        assert_eq!(
            g.partition_index(BlockRange {
                addr,
                nb_blocks: 128
            }),
            Err(GeometryError::NotPartitionStart { addr }),
            "{addr:#x}"
        );
    }
    for nb_blocks in [0, 1, 127, 129, u16::MAX] {
        assert_eq!(
            g.partition_index(BlockRange {
                addr: start,
                nb_blocks
            }),
            Err(GeometryError::BlockCountMismatch {
                nb_blocks,
                expected: 128
            })
        );
    }
    assert_eq!(g.partition_containing(0), None);
    assert_eq!(g.partition_containing(start - 1), None);
    assert_eq!(g.partition_containing(start + PARTITION * n as u64), None);
    assert_eq!(g.partition_containing(u64::MAX), None);
}

#[test]
fn usable_partitions() {
    let g = validate(&qemu_like()).unwrap();
    assert_eq!(g.usable_partitions(0), 0);
    assert_eq!(g.usable_partitions(PARTITION - 2 * MIB), 0);
    assert_eq!(g.usable_partitions(PARTITION), 1);
    assert_eq!(g.usable_partitions(GIB), 4);
    assert_eq!(g.usable_partitions(4 * GIB), 16);
    assert_eq!(g.usable_partitions(u64::MAX), 16);

    // With an unaligned head, the head counts in the usable size.
    let config = Config {
        addr: 4 * GIB + 128 * MIB,
        region_size: GIB,
        usable_region_size: GIB,
        ..qemu_like()
    };
    let g = validate(&config).unwrap();
    assert_eq!(g.usable_partitions(PARTITION), 0);
    assert_eq!(g.usable_partitions(128 * MIB + PARTITION), 1);
    assert_eq!(g.usable_partitions(GIB), 3);
}

#[test]
fn errors_display() {
    let errors = [
        ConfigError::MemoryBlockSize {
            memory_block_size: 3,
        },
        ConfigError::PartitionSize {
            partition_size: 3,
            memory_block_size: 4,
        },
        ConfigError::BlockSizeNotPowerOfTwo { block_size: 3 },
        ConfigError::BlockSizeExceedsPartition {
            block_size: 8,
            partition_size: 4,
        },
        ConfigError::Misaligned {
            field: ConfigField::PluggedSize,
            value: 3,
            block_size: 2,
        },
        ConfigError::RegionOverflow {
            addr: 1,
            region_size: u64::MAX,
        },
        ConfigError::UsableExceedsRegion {
            usable_region_size: 2,
            region_size: 1,
        },
        ConfigError::PluggedExceedsUsable {
            plugged_size: 2,
            usable_region_size: 1,
        },
        ConfigError::RequestedExceedsUsable {
            requested_size: 2,
            usable_region_size: 1,
        },
        ConfigError::TooManyBlocksPerPartition {
            blocks: 65536,
            block_size: 4096,
            partition_size: 1 << 28,
        },
        ConfigError::NoWholePartition {
            addr: 0,
            region_size: 0,
            partition_size: 1 << 28,
        },
        ConfigError::TooManyPartitions { partitions: 1 },
    ];
    for e in errors {
        assert!(!e.to_string().is_empty());
    }
    assert!(ConfigError::Misaligned {
        field: ConfigField::PluggedSize,
        value: 3,
        block_size: 2,
    }
    .to_string()
    .contains("plugged_size"));
    for e in [
        GeometryError::IndexOutOfRange {
            index: 9,
            nr_partitions: 3,
        },
        GeometryError::NotPartitionStart { addr: 0x1000 },
        GeometryError::BlockCountMismatch {
            nb_blocks: 1,
            expected: 2,
        },
    ] {
        assert!(!e.to_string().is_empty());
    }
}
