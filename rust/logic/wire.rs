// SPDX-License-Identifier: GPL-2.0

//! virtio-mem wire format: requests, responses, configuration space and
//! feature bits, plus the checks a driver makes on a device's configuration
//! before it serves it in whole HotMem partitions.
//!
//! The layouts follow the virtio specification (section "Memory Device") and
//! Linux's `include/uapi/linux/virtio_mem.h`. virtio-mem is a modern-only
//! device (it requires `VIRTIO_F_VERSION_1`), so every `__virtio16` and
//! `__virtio64` field is little-endian, exactly like the `__le` fields of the
//! configuration space.
//!
//! Encoders write every byte of the fixed-size buffer they are given, with
//! all padding zeroed. Decoders take any byte slice, check its length first
//! and ignore padding (reserved fields are written as zero and ignored when
//! read). Nothing here allocates, panics or uses floating point: the file is
//! `core`-only so that it compiles both in the kernel module and in the host
//! test crate, which include it with `#[path]` as a module named `wire`.

#![forbid(unsafe_code)]
#![deny(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::expect_used,
    clippy::float_arithmetic,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::unreachable,
    clippy::unwrap_used
)]

use core::fmt;

// --- Raw values, named as in include/uapi/linux/virtio_mem.h ---------------

/// Feature bit: `node_id` is an ACPI PXM and is valid.
pub const VIRTIO_MEM_F_ACPI_PXM: u32 = 0;
/// Feature bit: unplugged memory must not be accessed.
pub const VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE: u32 = 1;
/// Feature bit: plugged memory stays plugged across suspend and resume.
pub const VIRTIO_MEM_F_PERSISTENT_SUSPEND: u32 = 2;

/// Request type: plug memory blocks.
pub const VIRTIO_MEM_REQ_PLUG: u16 = 0;
/// Request type: unplug memory blocks.
pub const VIRTIO_MEM_REQ_UNPLUG: u16 = 1;
/// Request type: unplug all blocks and shrink the usable region.
pub const VIRTIO_MEM_REQ_UNPLUG_ALL: u16 = 2;
/// Request type: query the plugged state of memory blocks.
pub const VIRTIO_MEM_REQ_STATE: u16 = 3;

/// Response type: request processed successfully.
pub const VIRTIO_MEM_RESP_ACK: u16 = 0;
/// Response type: request denied (e.g. plugging more than requested).
pub const VIRTIO_MEM_RESP_NACK: u16 = 1;
/// Response type: the device cannot process the request now, retry later.
pub const VIRTIO_MEM_RESP_BUSY: u16 = 2;
/// Response type: error in the request (e.g. address or alignment).
pub const VIRTIO_MEM_RESP_ERROR: u16 = 3;

/// Block state: all queried blocks are plugged.
pub const VIRTIO_MEM_STATE_PLUGGED: u16 = 0;
/// Block state: all queried blocks are unplugged.
pub const VIRTIO_MEM_STATE_UNPLUGGED: u16 = 1;
/// Block state: some queried blocks are plugged, some are not.
pub const VIRTIO_MEM_STATE_MIXED: u16 = 2;

// --- Sizes and offsets ------------------------------------------------------

/// Size in bytes of `struct virtio_mem_req`.
pub const REQUEST_SIZE: usize = 24;
/// Size in bytes of the response header (`type` and its padding): enough
/// for every response except an ACK to a STATE request.
pub const RESPONSE_HEADER_SIZE: usize = 8;
/// Size in bytes of `struct virtio_mem_resp` (header plus the `state` field;
/// the struct has 2-byte alignment, so there is no trailing padding).
pub const RESPONSE_SIZE: usize = 10;
/// Size in bytes of `struct virtio_mem_config`.
pub const CONFIG_SIZE: usize = 56;

const REQ_TYPE: usize = 0;
const REQ_ADDR: usize = 8;
const REQ_NB_BLOCKS: usize = 16;
const RESP_TYPE: usize = 0;
const RESP_STATE: usize = 8;

// --- Little-endian field access (bounds-checked, never panics) -------------

/// The little-endian `u16` at `offset`, if `buf` holds it.
fn read_le16(buf: &[u8], offset: usize) -> Option<u16> {
    let bytes = buf.get(offset..)?.first_chunk::<2>()?;
    Some(u16::from_le_bytes(*bytes))
}

/// The little-endian `u64` at `offset`, if `buf` holds it.
fn read_le64(buf: &[u8], offset: usize) -> Option<u64> {
    let bytes = buf.get(offset..)?.first_chunk::<8>()?;
    Some(u64::from_le_bytes(*bytes))
}

/// Writes `value` at `offset`. The offsets used in this file are constants
/// that fit their buffers (the tests check every byte), so the write always
/// happens; an out-of-range offset would be skipped, never a panic.
fn write_le16(buf: &mut [u8], offset: usize, value: u16) {
    if let Some(dst) = buf.get_mut(offset..).and_then(|b| b.first_chunk_mut::<2>()) {
        *dst = value.to_le_bytes();
    }
}

/// Like [`write_le16`], for a 64-bit field.
fn write_le64(buf: &mut [u8], offset: usize, value: u64) {
    if let Some(dst) = buf.get_mut(offset..).and_then(|b| b.first_chunk_mut::<8>()) {
        *dst = value.to_le_bytes();
    }
}

/// Checks that `buf` holds at least `needed` bytes.
fn check_len(buf: &[u8], needed: usize) -> Result<(), DecodeError> {
    if buf.len() < needed {
        return Err(DecodeError::TooShort {
            needed,
            got: buf.len(),
        });
    }
    Ok(())
}

/// Reads a field that [`check_len`] has already shown to be in bounds.
fn field<T>(value: Option<T>, buf: &[u8], needed: usize) -> Result<T, DecodeError> {
    value.ok_or(DecodeError::TooShort {
        needed,
        got: buf.len(),
    })
}

// --- Errors -----------------------------------------------------------------

/// Why bytes could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer is shorter than the structure.
    TooShort {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes the buffer has.
        got: usize,
    },
    /// The request `type` field has a value the specification does not define.
    UnknownRequestType(u16),
    /// The response `type` field has a value the specification does not define.
    UnknownResponseType(u16),
    /// The `state` of a STATE response has a value the specification does not
    /// define.
    UnknownBlockState(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { needed, got } => {
                write!(f, "buffer too short: need {needed} bytes, got {got}")
            }
            Self::UnknownRequestType(v) => write!(f, "unknown request type {v}"),
            Self::UnknownResponseType(v) => write!(f, "unknown response type {v}"),
            Self::UnknownBlockState(v) => write!(f, "unknown block state {v}"),
        }
    }
}

// --- Feature bits -----------------------------------------------------------

/// A virtio-mem device feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// `VIRTIO_MEM_F_ACPI_PXM`: `node_id` is an ACPI PXM and is valid.
    AcpiPxm,
    /// `VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE`: unplugged memory must not be
    /// read or written.
    UnpluggedInaccessible,
    /// `VIRTIO_MEM_F_PERSISTENT_SUSPEND`: plugged memory stays plugged across
    /// suspend and resume.
    PersistentSuspend,
}

impl Feature {
    /// Every feature, in bit order.
    pub const ALL: [Self; 3] = [
        Self::AcpiPxm,
        Self::UnpluggedInaccessible,
        Self::PersistentSuspend,
    ];

    /// The feature's bit number.
    pub const fn bit(self) -> u32 {
        match self {
            Self::AcpiPxm => VIRTIO_MEM_F_ACPI_PXM,
            Self::UnpluggedInaccessible => VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
            Self::PersistentSuspend => VIRTIO_MEM_F_PERSISTENT_SUSPEND,
        }
    }

    /// The feature as a mask in a 64-bit feature word.
    pub const fn mask(self) -> u64 {
        match self {
            Self::AcpiPxm => 1 << VIRTIO_MEM_F_ACPI_PXM,
            Self::UnpluggedInaccessible => 1 << VIRTIO_MEM_F_UNPLUGGED_INACCESSIBLE,
            Self::PersistentSuspend => 1 << VIRTIO_MEM_F_PERSISTENT_SUSPEND,
        }
    }

    /// Whether the feature is set in the feature word `features`.
    pub const fn is_set_in(self, features: u64) -> bool {
        features & self.mask() != 0
    }
}

// --- Requests ---------------------------------------------------------------

/// The `type` of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_MEM_REQ_PLUG`.
    Plug,
    /// `VIRTIO_MEM_REQ_UNPLUG`.
    Unplug,
    /// `VIRTIO_MEM_REQ_UNPLUG_ALL`.
    UnplugAll,
    /// `VIRTIO_MEM_REQ_STATE`.
    State,
}

impl RequestType {
    /// Every request type, in wire-value order.
    pub const ALL: [Self; 4] = [Self::Plug, Self::Unplug, Self::UnplugAll, Self::State];

    /// The wire value.
    pub const fn to_raw(self) -> u16 {
        match self {
            Self::Plug => VIRTIO_MEM_REQ_PLUG,
            Self::Unplug => VIRTIO_MEM_REQ_UNPLUG,
            Self::UnplugAll => VIRTIO_MEM_REQ_UNPLUG_ALL,
            Self::State => VIRTIO_MEM_REQ_STATE,
        }
    }

    /// Parses a wire value.
    pub const fn from_raw(raw: u16) -> Result<Self, DecodeError> {
        match raw {
            VIRTIO_MEM_REQ_PLUG => Ok(Self::Plug),
            VIRTIO_MEM_REQ_UNPLUG => Ok(Self::Unplug),
            VIRTIO_MEM_REQ_UNPLUG_ALL => Ok(Self::UnplugAll),
            VIRTIO_MEM_REQ_STATE => Ok(Self::State),
            other => Err(DecodeError::UnknownRequestType(other)),
        }
    }
}

/// A range of device blocks: the payload of PLUG, UNPLUG and STATE requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// Guest-physical address of the first block.
    pub addr: u64,
    /// Number of device blocks.
    pub nb_blocks: u16,
}

/// A guest-to-device request (`struct virtio_mem_req`).
///
/// Layout, 24 bytes: `le16 type`, 3 x `le16` padding, then the payload
/// `le64 addr`, `le16 nb_blocks`, 3 x `le16` padding. UNPLUG_ALL has no
/// payload; its payload bytes are written as zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Plug the blocks of the range.
    Plug(BlockRange),
    /// Unplug the blocks of the range.
    Unplug(BlockRange),
    /// Unplug every block and shrink the usable region.
    UnplugAll,
    /// Query the plugged state of the blocks of the range.
    State(BlockRange),
}

impl Request {
    /// The request's type.
    pub const fn request_type(&self) -> RequestType {
        match self {
            Self::Plug(_) => RequestType::Plug,
            Self::Unplug(_) => RequestType::Unplug,
            Self::UnplugAll => RequestType::UnplugAll,
            Self::State(_) => RequestType::State,
        }
    }

    /// The block range the request is about, if it has one.
    pub const fn range(&self) -> Option<BlockRange> {
        match self {
            Self::Plug(r) | Self::Unplug(r) | Self::State(r) => Some(*r),
            Self::UnplugAll => None,
        }
    }

    /// Writes the request into `buf` (every byte, padding zeroed).
    pub fn encode(&self, buf: &mut [u8; REQUEST_SIZE]) {
        *buf = [0; REQUEST_SIZE];
        write_le16(buf, REQ_TYPE, self.request_type().to_raw());
        if let Some(range) = self.range() {
            write_le64(buf, REQ_ADDR, range.addr);
            write_le16(buf, REQ_NB_BLOCKS, range.nb_blocks);
        }
    }

    /// The request as bytes.
    pub fn to_bytes(&self) -> [u8; REQUEST_SIZE] {
        let mut buf = [0; REQUEST_SIZE];
        self.encode(&mut buf);
        buf
    }

    /// Parses a request (what a device, or a test standing in for one, does).
    /// Needs [`REQUEST_SIZE`] bytes; padding and the payload of UNPLUG_ALL
    /// are ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        check_len(buf, REQUEST_SIZE)?;
        let kind = RequestType::from_raw(field(read_le16(buf, REQ_TYPE), buf, REQUEST_SIZE)?)?;
        let range = BlockRange {
            addr: field(read_le64(buf, REQ_ADDR), buf, REQUEST_SIZE)?,
            nb_blocks: field(read_le16(buf, REQ_NB_BLOCKS), buf, REQUEST_SIZE)?,
        };
        Ok(match kind {
            RequestType::Plug => Self::Plug(range),
            RequestType::Unplug => Self::Unplug(range),
            RequestType::UnplugAll => Self::UnplugAll,
            RequestType::State => Self::State(range),
        })
    }
}

// --- Responses --------------------------------------------------------------

/// The `type` of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseType {
    /// `VIRTIO_MEM_RESP_ACK`: processed successfully.
    Ack,
    /// `VIRTIO_MEM_RESP_NACK`: denied (e.g. plugging more than requested).
    Nack,
    /// `VIRTIO_MEM_RESP_BUSY`: cannot be processed now; try again later.
    Busy,
    /// `VIRTIO_MEM_RESP_ERROR`: error in the request (address, alignment,
    /// or the blocks are not in the state the request expects).
    Error,
}

impl ResponseType {
    /// Every response type, in wire-value order.
    pub const ALL: [Self; 4] = [Self::Ack, Self::Nack, Self::Busy, Self::Error];

    /// The wire value.
    pub const fn to_raw(self) -> u16 {
        match self {
            Self::Ack => VIRTIO_MEM_RESP_ACK,
            Self::Nack => VIRTIO_MEM_RESP_NACK,
            Self::Busy => VIRTIO_MEM_RESP_BUSY,
            Self::Error => VIRTIO_MEM_RESP_ERROR,
        }
    }

    /// Parses a wire value.
    pub const fn from_raw(raw: u16) -> Result<Self, DecodeError> {
        match raw {
            VIRTIO_MEM_RESP_ACK => Ok(Self::Ack),
            VIRTIO_MEM_RESP_NACK => Ok(Self::Nack),
            VIRTIO_MEM_RESP_BUSY => Ok(Self::Busy),
            VIRTIO_MEM_RESP_ERROR => Ok(Self::Error),
            other => Err(DecodeError::UnknownResponseType(other)),
        }
    }

    /// Whether the specification lists this response for `request` (as in
    /// the comments of `virtio_mem.h`). A device that answers otherwise is
    /// misbehaving; see the `retry` module for what the driver then does.
    pub const fn is_applicable_to(self, request: RequestType) -> bool {
        match self {
            Self::Ack => true,
            Self::Nack => matches!(request, RequestType::Plug),
            Self::Busy => !matches!(request, RequestType::State),
            Self::Error => !matches!(request, RequestType::UnplugAll),
        }
    }
}

/// The plugged state of a range of blocks, as answered to a STATE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockState {
    /// `VIRTIO_MEM_STATE_PLUGGED`: every block is plugged.
    Plugged,
    /// `VIRTIO_MEM_STATE_UNPLUGGED`: every block is unplugged.
    Unplugged,
    /// `VIRTIO_MEM_STATE_MIXED`: some blocks are plugged, some are not.
    Mixed,
}

impl BlockState {
    /// Every block state, in wire-value order.
    pub const ALL: [Self; 3] = [Self::Plugged, Self::Unplugged, Self::Mixed];

    /// The wire value.
    pub const fn to_raw(self) -> u16 {
        match self {
            Self::Plugged => VIRTIO_MEM_STATE_PLUGGED,
            Self::Unplugged => VIRTIO_MEM_STATE_UNPLUGGED,
            Self::Mixed => VIRTIO_MEM_STATE_MIXED,
        }
    }

    /// Parses a wire value.
    pub const fn from_raw(raw: u16) -> Result<Self, DecodeError> {
        match raw {
            VIRTIO_MEM_STATE_PLUGGED => Ok(Self::Plugged),
            VIRTIO_MEM_STATE_UNPLUGGED => Ok(Self::Unplugged),
            VIRTIO_MEM_STATE_MIXED => Ok(Self::Mixed),
            other => Err(DecodeError::UnknownBlockState(other)),
        }
    }
}

/// A device-to-guest response (`struct virtio_mem_resp`).
///
/// Layout, 10 bytes: `le16 type`, 3 x `le16` padding, then `le16 state`,
/// which only means something in an ACK to a STATE request. The other
/// responses are written with `state` zeroed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// ACK to PLUG, UNPLUG or UNPLUG_ALL.
    Ack,
    /// ACK to STATE, with the state of the queried blocks.
    AckState(BlockState),
    /// NACK.
    Nack,
    /// BUSY.
    Busy,
    /// ERROR.
    Error,
}

impl Response {
    /// The response's type.
    pub const fn response_type(&self) -> ResponseType {
        match self {
            Self::Ack | Self::AckState(_) => ResponseType::Ack,
            Self::Nack => ResponseType::Nack,
            Self::Busy => ResponseType::Busy,
            Self::Error => ResponseType::Error,
        }
    }

    /// Writes the response into `buf` (every byte, padding zeroed).
    pub fn encode(&self, buf: &mut [u8; RESPONSE_SIZE]) {
        *buf = [0; RESPONSE_SIZE];
        write_le16(buf, RESP_TYPE, self.response_type().to_raw());
        if let Self::AckState(state) = self {
            write_le16(buf, RESP_STATE, state.to_raw());
        }
    }

    /// The response as bytes.
    pub fn to_bytes(&self) -> [u8; RESPONSE_SIZE] {
        let mut buf = [0; RESPONSE_SIZE];
        self.encode(&mut buf);
        buf
    }

    /// What the response buffer holds before the device writes it: a type
    /// no device answers, so that a buffer the device did not write never
    /// decodes as a response. The driver decodes the whole buffer and does
    /// not trust the used length the device reports (as Linux's virtio
    /// drivers, since devices misreport it): a short length is no error.
    pub const UNWRITTEN: [u8; RESPONSE_SIZE] = [0xff; RESPONSE_SIZE];

    /// Parses the response the device wrote for a request of type `request`
    /// (the response buffer, which started as [`Response::UNWRITTEN`]). An
    /// ACK to STATE needs [`RESPONSE_SIZE`] bytes and a known `state`; every
    /// other response needs [`RESPONSE_HEADER_SIZE`] bytes and its `state`
    /// is ignored.
    pub fn decode(buf: &[u8], request: RequestType) -> Result<Self, DecodeError> {
        check_len(buf, RESPONSE_HEADER_SIZE)?;
        let raw = field(read_le16(buf, RESP_TYPE), buf, RESPONSE_HEADER_SIZE)?;
        Ok(match ResponseType::from_raw(raw)? {
            ResponseType::Ack if matches!(request, RequestType::State) => {
                check_len(buf, RESPONSE_SIZE)?;
                let state = field(read_le16(buf, RESP_STATE), buf, RESPONSE_SIZE)?;
                Self::AckState(BlockState::from_raw(state)?)
            }
            ResponseType::Ack => Self::Ack,
            ResponseType::Nack => Self::Nack,
            ResponseType::Busy => Self::Busy,
            ResponseType::Error => Self::Error,
        })
    }
}

// --- Configuration space ----------------------------------------------------

/// A field of the configuration space, to name it in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigField {
    /// `block_size`.
    BlockSize,
    /// `node_id`.
    NodeId,
    /// `addr`.
    Addr,
    /// `region_size`.
    RegionSize,
    /// `usable_region_size`.
    UsableRegionSize,
    /// `plugged_size`.
    PluggedSize,
    /// `requested_size`.
    RequestedSize,
}

impl ConfigField {
    /// Byte offset of the field in the configuration space.
    pub const fn offset(self) -> usize {
        match self {
            Self::BlockSize => 0,
            Self::NodeId => 8,
            Self::Addr => 16,
            Self::RegionSize => 24,
            Self::UsableRegionSize => 32,
            Self::PluggedSize => 40,
            Self::RequestedSize => 48,
        }
    }

    /// Width of the field in bytes.
    pub const fn width(self) -> usize {
        match self {
            Self::NodeId => 2,
            _ => 8,
        }
    }

    /// The field's name in `struct virtio_mem_config`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BlockSize => "block_size",
            Self::NodeId => "node_id",
            Self::Addr => "addr",
            Self::RegionSize => "region_size",
            Self::UsableRegionSize => "usable_region_size",
            Self::PluggedSize => "plugged_size",
            Self::RequestedSize => "requested_size",
        }
    }
}

/// The device configuration space (`struct virtio_mem_config`).
///
/// Layout, 56 bytes, all little-endian: `block_size` u64 @0, `node_id` u16
/// @8, 6 bytes padding, `addr` u64 @16, `region_size` u64 @24,
/// `usable_region_size` u64 @32, `plugged_size` u64 @40, `requested_size`
/// u64 @48.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Device block size and alignment in bytes. Cannot change.
    pub block_size: u64,
    /// NUMA node (an ACPI PXM) if [`Feature::AcpiPxm`] was negotiated.
    /// Cannot change.
    pub node_id: u16,
    /// Guest-physical start address of the device region. Cannot change.
    pub addr: u64,
    /// Size of the device region (the maximum). Cannot change.
    pub region_size: u64,
    /// Part of the region, from its start, that requests may currently use.
    /// Grows up to `region_size`; shrinks only on UNPLUG_ALL.
    pub usable_region_size: u64,
    /// Bytes currently plugged (no config-change notification on change).
    pub plugged_size: u64,
    /// Bytes the device asks the driver to have plugged.
    pub requested_size: u64,
}

impl Config {
    /// Parses the configuration space; needs [`CONFIG_SIZE`] bytes. The
    /// padding after `node_id` is ignored.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        check_len(buf, CONFIG_SIZE)?;
        let le64 = |f: ConfigField| field(read_le64(buf, f.offset()), buf, CONFIG_SIZE);
        Ok(Self {
            block_size: le64(ConfigField::BlockSize)?,
            node_id: field(
                read_le16(buf, ConfigField::NodeId.offset()),
                buf,
                CONFIG_SIZE,
            )?,
            addr: le64(ConfigField::Addr)?,
            region_size: le64(ConfigField::RegionSize)?,
            usable_region_size: le64(ConfigField::UsableRegionSize)?,
            plugged_size: le64(ConfigField::PluggedSize)?,
            requested_size: le64(ConfigField::RequestedSize)?,
        })
    }

    /// Writes the configuration space into `buf` (every byte, padding
    /// zeroed). Drivers never write it; devices and tests do.
    pub fn encode(&self, buf: &mut [u8; CONFIG_SIZE]) {
        *buf = [0; CONFIG_SIZE];
        write_le64(buf, ConfigField::BlockSize.offset(), self.block_size);
        write_le16(buf, ConfigField::NodeId.offset(), self.node_id);
        write_le64(buf, ConfigField::Addr.offset(), self.addr);
        write_le64(buf, ConfigField::RegionSize.offset(), self.region_size);
        write_le64(
            buf,
            ConfigField::UsableRegionSize.offset(),
            self.usable_region_size,
        );
        write_le64(buf, ConfigField::PluggedSize.offset(), self.plugged_size);
        write_le64(
            buf,
            ConfigField::RequestedSize.offset(),
            self.requested_size,
        );
    }

    /// The configuration space as bytes.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut buf = [0; CONFIG_SIZE];
        self.encode(&mut buf);
        buf
    }

    /// Checks everything a driver must check before it serves the device in
    /// whole partitions of `partition_size` bytes, on a kernel whose memory
    /// block size is `memory_block_size`, and returns the partition geometry.
    ///
    /// Checked, in this order (the first failure is returned):
    /// 1. `memory_block_size` is a power of two;
    /// 2. `partition_size` is a power-of-two multiple of it (so a power of
    ///    two `>= memory_block_size`);
    /// 3. `block_size` is a power of two and `<= partition_size` (so it
    ///    divides the partition size);
    /// 4. `addr`, `region_size`, `usable_region_size`, `plugged_size` and
    ///    `requested_size` are multiples of `block_size` (the specification
    ///    requires it of the device);
    /// 5. `addr + region_size` does not overflow;
    /// 6. `usable_region_size <= region_size`, `plugged_size <=
    ///    usable_region_size` and `requested_size <= usable_region_size`;
    /// 7. a partition's block count fits the 16-bit `nb_blocks` of a request;
    /// 8. at least one whole partition, aligned to its size, lies inside the
    ///    region. The region need not be partition-aligned: the geometry
    ///    covers its largest aligned sub-range and ignores the ends.
    ///
    /// `requested_size` need not be a multiple of the partition size (the
    /// planner plugs whole partitions only, rounding down).
    ///
    /// On a configuration-change notification, validate again and compare
    /// the geometry with the one from probe: it depends only on fields that
    /// cannot change, so a difference means the device is broken.
    pub fn validate(
        &self,
        memory_block_size: u64,
        partition_size: u64,
    ) -> Result<Geometry, ConfigError> {
        check_sizes(memory_block_size, partition_size, self.block_size)?;
        self.check_alignment()?;
        let region_end =
            self.addr
                .checked_add(self.region_size)
                .ok_or(ConfigError::RegionOverflow {
                    addr: self.addr,
                    region_size: self.region_size,
                })?;
        self.check_dynamic_sizes()?;
        let blocks_per_partition = blocks_per_partition(partition_size, self.block_size)?;
        let (first_partition_addr, nr_partitions) =
            aligned_partitions(self.addr, region_end, partition_size).ok_or(
                ConfigError::NoWholePartition {
                    addr: self.addr,
                    region_size: self.region_size,
                    partition_size,
                },
            )?;
        let nr_partitions =
            usize::try_from(nr_partitions).map_err(|_| ConfigError::TooManyPartitions {
                partitions: nr_partitions,
            })?;
        Ok(Geometry {
            region_addr: self.addr,
            block_size: self.block_size,
            partition_size,
            first_partition_addr,
            nr_partitions,
            blocks_per_partition,
        })
    }

    /// Step 4 of [`Config::validate`]: `block_size` alignment of the fields.
    fn check_alignment(&self) -> Result<(), ConfigError> {
        let fields = [
            (ConfigField::Addr, self.addr),
            (ConfigField::RegionSize, self.region_size),
            (ConfigField::UsableRegionSize, self.usable_region_size),
            (ConfigField::PluggedSize, self.plugged_size),
            (ConfigField::RequestedSize, self.requested_size),
        ];
        for (field, value) in fields {
            if !is_multiple(value, self.block_size) {
                return Err(ConfigError::Misaligned {
                    field,
                    value,
                    block_size: self.block_size,
                });
            }
        }
        Ok(())
    }

    /// Step 6 of [`Config::validate`]: the sizes that change at run time.
    fn check_dynamic_sizes(&self) -> Result<(), ConfigError> {
        if self.usable_region_size > self.region_size {
            return Err(ConfigError::UsableExceedsRegion {
                usable_region_size: self.usable_region_size,
                region_size: self.region_size,
            });
        }
        if self.plugged_size > self.usable_region_size {
            return Err(ConfigError::PluggedExceedsUsable {
                plugged_size: self.plugged_size,
                usable_region_size: self.usable_region_size,
            });
        }
        if self.requested_size > self.usable_region_size {
            return Err(ConfigError::RequestedExceedsUsable {
                requested_size: self.requested_size,
                usable_region_size: self.usable_region_size,
            });
        }
        Ok(())
    }
}

/// Whether `value` is a multiple of `align` (false for `align == 0`).
fn is_multiple(value: u64, align: u64) -> bool {
    value.checked_rem(align) == Some(0)
}

/// Steps 1 to 3 of [`Config::validate`].
fn check_sizes(
    memory_block_size: u64,
    partition_size: u64,
    block_size: u64,
) -> Result<(), ConfigError> {
    if !memory_block_size.is_power_of_two() {
        return Err(ConfigError::MemoryBlockSize { memory_block_size });
    }
    if !partition_size.is_power_of_two() || partition_size < memory_block_size {
        return Err(ConfigError::PartitionSize {
            partition_size,
            memory_block_size,
        });
    }
    if !block_size.is_power_of_two() {
        return Err(ConfigError::BlockSizeNotPowerOfTwo { block_size });
    }
    if block_size > partition_size {
        return Err(ConfigError::BlockSizeExceedsPartition {
            block_size,
            partition_size,
        });
    }
    Ok(())
}

/// Step 7 of [`Config::validate`]: device blocks in a partition, as a
/// request's `nb_blocks`.
fn blocks_per_partition(partition_size: u64, block_size: u64) -> Result<u16, ConfigError> {
    // `block_size` is a non-zero power of two here; were it zero, the
    // division would fail and so does the check, rather than yield 0 blocks.
    let blocks = partition_size.checked_div(block_size).unwrap_or(u64::MAX);
    u16::try_from(blocks).map_err(|_| ConfigError::TooManyBlocksPerPartition {
        blocks,
        block_size,
        partition_size,
    })
}

/// Step 8 of [`Config::validate`]: the first partition-aligned address at or
/// after `start` and how many whole partitions fit before `end`; `None` if
/// none does. `partition_size` must be a power of two.
fn aligned_partitions(start: u64, end: u64, partition_size: u64) -> Option<(u64, u64)> {
    let mask = partition_size.checked_sub(1)?;
    let first = start.checked_add(mask)? & !mask;
    let last_end = end & !mask;
    let count = last_end.checked_sub(first)?.checked_div(partition_size)?;
    if count == 0 {
        return None;
    }
    Some((first, count))
}

/// Why a configuration cannot be served in whole partitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The kernel's memory block size is not a power of two (or is zero).
    MemoryBlockSize {
        /// The memory block size given.
        memory_block_size: u64,
    },
    /// The partition size is not a power-of-two multiple of the memory block
    /// size.
    PartitionSize {
        /// The partition size given.
        partition_size: u64,
        /// The memory block size given.
        memory_block_size: u64,
    },
    /// `block_size` is not a power of two (or is zero).
    BlockSizeNotPowerOfTwo {
        /// The device's block size.
        block_size: u64,
    },
    /// `block_size` is larger than a partition.
    BlockSizeExceedsPartition {
        /// The device's block size.
        block_size: u64,
        /// The partition size given.
        partition_size: u64,
    },
    /// A field is not a multiple of `block_size`.
    Misaligned {
        /// The field.
        field: ConfigField,
        /// Its value.
        value: u64,
        /// The device's block size.
        block_size: u64,
    },
    /// `addr + region_size` overflows 64 bits.
    RegionOverflow {
        /// The region's start address.
        addr: u64,
        /// The region's size.
        region_size: u64,
    },
    /// `usable_region_size > region_size`.
    UsableExceedsRegion {
        /// The usable size.
        usable_region_size: u64,
        /// The region size.
        region_size: u64,
    },
    /// `plugged_size > usable_region_size`.
    PluggedExceedsUsable {
        /// The plugged size.
        plugged_size: u64,
        /// The usable size.
        usable_region_size: u64,
    },
    /// `requested_size > usable_region_size`.
    RequestedExceedsUsable {
        /// The requested size.
        requested_size: u64,
        /// The usable size.
        usable_region_size: u64,
    },
    /// A partition has more device blocks than a request's 16-bit
    /// `nb_blocks` can name.
    TooManyBlocksPerPartition {
        /// Device blocks per partition.
        blocks: u64,
        /// The device's block size.
        block_size: u64,
        /// The partition size given.
        partition_size: u64,
    },
    /// No whole partition, aligned to its size, lies inside the region.
    NoWholePartition {
        /// The region's start address.
        addr: u64,
        /// The region's size.
        region_size: u64,
        /// The partition size given.
        partition_size: u64,
    },
    /// More partitions than this machine's `usize` can count.
    TooManyPartitions {
        /// Partitions in the region.
        partitions: u64,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MemoryBlockSize { memory_block_size } => write!(
                f,
                "memory block size {memory_block_size:#x} is not a power of two"
            ),
            Self::PartitionSize {
                partition_size,
                memory_block_size,
            } => write!(
                f,
                "partition size {partition_size:#x} is not a power-of-two multiple \
                 of the memory block size {memory_block_size:#x}"
            ),
            Self::BlockSizeNotPowerOfTwo { block_size } => {
                write!(f, "block_size {block_size:#x} is not a power of two")
            }
            Self::BlockSizeExceedsPartition {
                block_size,
                partition_size,
            } => write!(
                f,
                "block_size {block_size:#x} exceeds the partition size {partition_size:#x}"
            ),
            Self::Misaligned {
                field,
                value,
                block_size,
            } => write!(
                f,
                "{} {value:#x} is not a multiple of block_size {block_size:#x}",
                field.name()
            ),
            Self::RegionOverflow { addr, region_size } => write!(
                f,
                "region {addr:#x} + {region_size:#x} overflows the address space"
            ),
            Self::UsableExceedsRegion {
                usable_region_size,
                region_size,
            } => write!(
                f,
                "usable_region_size {usable_region_size:#x} exceeds region_size {region_size:#x}"
            ),
            Self::PluggedExceedsUsable {
                plugged_size,
                usable_region_size,
            } => write!(
                f,
                "plugged_size {plugged_size:#x} exceeds usable_region_size {usable_region_size:#x}"
            ),
            Self::RequestedExceedsUsable {
                requested_size,
                usable_region_size,
            } => write!(
                f,
                "requested_size {requested_size:#x} exceeds usable_region_size \
                 {usable_region_size:#x}"
            ),
            Self::TooManyBlocksPerPartition {
                blocks,
                block_size,
                partition_size,
            } => write!(
                f,
                "a partition of {partition_size:#x} bytes is {blocks} blocks of \
                 {block_size:#x}, more than a request's nb_blocks can hold ({})",
                u16::MAX
            ),
            Self::NoWholePartition {
                addr,
                region_size,
                partition_size,
            } => write!(
                f,
                "no aligned partition of {partition_size:#x} bytes fits in the region \
                 {addr:#x} + {region_size:#x}"
            ),
            Self::TooManyPartitions { partitions } => {
                write!(f, "{partitions} partitions do not fit usize")
            }
        }
    }
}

// --- Geometry ---------------------------------------------------------------

/// How a validated device region splits into partitions.
///
/// Only [`Config::validate`] makes one, so its invariants hold: the sizes
/// are powers of two with `block_size <= partition_size`, the partitions
/// `first_partition_addr + i * partition_size` for `i < nr_partitions` lie
/// inside the device region without overflow, and a partition's block count
/// fits `u16`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    region_addr: u64,
    block_size: u64,
    partition_size: u64,
    first_partition_addr: u64,
    nr_partitions: usize,
    blocks_per_partition: u16,
}

impl Geometry {
    /// The device block size in bytes.
    pub const fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The partition size in bytes.
    pub const fn partition_size(&self) -> u64 {
        self.partition_size
    }

    /// Start address of the device region (which may be before the first
    /// partition, if it is not partition-aligned).
    pub const fn region_addr(&self) -> u64 {
        self.region_addr
    }

    /// Guest-physical address of partition 0.
    pub const fn first_partition_addr(&self) -> u64 {
        self.first_partition_addr
    }

    /// Number of whole partitions in the device region.
    pub const fn nr_partitions(&self) -> usize {
        self.nr_partitions
    }

    /// Device blocks in one partition (a request's `nb_blocks`).
    pub const fn blocks_per_partition(&self) -> u16 {
        self.blocks_per_partition
    }

    /// The blocks of partition `index`, as a request payload.
    pub fn partition_range(&self, index: usize) -> Result<BlockRange, GeometryError> {
        let out_of_range = GeometryError::IndexOutOfRange {
            index,
            nr_partitions: self.nr_partitions,
        };
        if index >= self.nr_partitions {
            return Err(out_of_range);
        }
        let addr = u64::try_from(index)
            .ok()
            .and_then(|i| i.checked_mul(self.partition_size))
            .and_then(|offset| offset.checked_add(self.first_partition_addr))
            .ok_or(out_of_range)?;
        Ok(BlockRange {
            addr,
            nb_blocks: self.blocks_per_partition,
        })
    }

    /// The index of the partition that `range` covers exactly: the inverse
    /// of [`Geometry::partition_range`], used to check what a request or
    /// response is about.
    pub fn partition_index(&self, range: BlockRange) -> Result<usize, GeometryError> {
        if range.nb_blocks != self.blocks_per_partition {
            return Err(GeometryError::BlockCountMismatch {
                nb_blocks: range.nb_blocks,
                expected: self.blocks_per_partition,
            });
        }
        let not_start = GeometryError::NotPartitionStart { addr: range.addr };
        let offset = range
            .addr
            .checked_sub(self.first_partition_addr)
            .ok_or(not_start)?;
        if !is_multiple(offset, self.partition_size) {
            return Err(not_start);
        }
        offset
            .checked_div(self.partition_size)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.nr_partitions)
            .ok_or(not_start)
    }

    /// The partition that contains guest-physical address `addr`, if any
    /// (e.g. to map a Linux memory block to its partition).
    pub fn partition_containing(&self, addr: u64) -> Option<usize> {
        addr.checked_sub(self.first_partition_addr)?
            .checked_div(self.partition_size)
            .and_then(|i| usize::try_from(i).ok())
            .filter(|&i| i < self.nr_partitions)
    }

    /// How many partitions, counted from partition 0, lie wholly inside the
    /// usable region `[region_addr, region_addr + usable_region_size)`.
    /// Requests may only touch those.
    pub fn usable_partitions(&self, usable_region_size: u64) -> usize {
        let usable_end = self.region_addr.saturating_add(usable_region_size);
        let whole = usable_end
            .checked_sub(self.first_partition_addr)
            .and_then(|len| len.checked_div(self.partition_size))
            .unwrap_or(0);
        usize::try_from(whole)
            .unwrap_or(usize::MAX)
            .min(self.nr_partitions)
    }

    /// A PLUG request for partition `index`.
    pub fn plug_request(&self, index: usize) -> Result<Request, GeometryError> {
        self.partition_range(index).map(Request::Plug)
    }

    /// An UNPLUG request for partition `index`.
    pub fn unplug_request(&self, index: usize) -> Result<Request, GeometryError> {
        self.partition_range(index).map(Request::Unplug)
    }

    /// A STATE request for partition `index`.
    pub fn state_request(&self, index: usize) -> Result<Request, GeometryError> {
        self.partition_range(index).map(Request::State)
    }
}

/// Why a partition index or block range does not name a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometryError {
    /// The index is not below the number of partitions.
    IndexOutOfRange {
        /// The index given.
        index: usize,
        /// Partitions in the region.
        nr_partitions: usize,
    },
    /// The address is not the start of a partition in the region.
    NotPartitionStart {
        /// The address given.
        addr: u64,
    },
    /// The block count is not one partition's.
    BlockCountMismatch {
        /// The block count given.
        nb_blocks: u16,
        /// Blocks per partition.
        expected: u16,
    },
}

impl fmt::Display for GeometryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IndexOutOfRange {
                index,
                nr_partitions,
            } => write!(
                f,
                "partition {index} out of range (device has {nr_partitions})"
            ),
            Self::NotPartitionStart { addr } => {
                write!(f, "{addr:#x} is not the start of a partition")
            }
            Self::BlockCountMismatch {
                nb_blocks,
                expected,
            } => write!(
                f,
                "{nb_blocks} blocks is not one partition ({expected} blocks)"
            ),
        }
    }
}
